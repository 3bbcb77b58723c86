"""The daemon's backfills wait for a code location that does not load, unless the operator says."""

from __future__ import annotations

import os
import subprocess
import sys

from backfill_dagster.instance.backfill_waits import RETRY_DEFINITION_CHANGED_VARIABLE, wait_for_unloadable_locations


def test_set_unless_the_operator_chose():
    environ: dict[str, str] = {}
    wait_for_unloadable_locations(environ)
    assert environ == {RETRY_DEFINITION_CHANGED_VARIABLE: "1"}
    chosen = {RETRY_DEFINITION_CHANGED_VARIABLE: ""}  # empty: Dagster's own behaviour, fail the backfill
    wait_for_unloadable_locations(chosen)
    assert chosen == {RETRY_DEFINITION_CHANGED_VARIABLE: ""}


def test_a_process_loading_the_production_event_log_sets_it():
    env = {k: v for k, v in os.environ.items() if k != RETRY_DEFINITION_CHANGED_VARIABLE}
    out = subprocess.run(
        [sys.executable, "-c", "import os, backfill_dagster.instance.event_log; "
         f"print(os.environ.get({RETRY_DEFINITION_CHANGED_VARIABLE!r}))"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]

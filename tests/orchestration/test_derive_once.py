"""h1/h4 are derived exactly once per m15 write, whichever sensor ticks while a run is deriving them.

A run over a box writes m15 first and derives h1/h4 after. A sensor tick that reads "what is
updated" at its start and "what is in progress" later sees, when the run finishes in between, m15
newer than h1/h4 and no run deriving them: it asks for them again (measured at whole-market scale:
thousands of partitions derived twice). Here the run is paused after its m15 step, every sensor of the
definitions that can request h1/h4 is evaluated, and the run is made to finish in the middle of each
tick; no sensor may ask for a partition the run derives.
"""

import threading
from datetime import date

import dagster as dg
import pandas as pd
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.orchestration import assets as assets_module, gap_sensor as gap_sensor_module
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.settings import Settings
from tests.orchestration.conftest import add_symbols

SYMBOLS = ["AAPL", "MSFT"]
SESSIONS = [date(2024, 12, 2), date(2024, 12, 3), date(2024, 12, 4)]
NOW = pd.Timestamp("2024-12-06 20:00", tz="America/New_York").tz_convert("UTC")
DERIVED = {dg.AssetKey("bars_h1"), dg.AssetKey("bars_h4")}
IN_RUN = {f"{d.isoformat()}|{s}" for s in SYMBOLS for d in SESSIONS}


class PausedRun:
    """The all_bars job over the box in a thread, held before its first derivation until released."""

    def __init__(self, defs, instance, monkeypatch):
        self.instance = instance
        self.release, self.paused = threading.Event(), threading.Event()
        self.result = None
        derive = assets_module.derive_partitions

        def held(*args, **kwargs):
            self.paused.set()
            assert self.release.wait(60), "the test never released the run"
            return derive(*args, **kwargs)

        monkeypatch.setattr(assets_module, "derive_partitions", held)
        job = defs.resolve_job_def(ALL_BARS_JOB)
        tags = range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[-1], SESSIONS[-1]))
        self.thread = threading.Thread(target=lambda: self._run(job, tags))
        self.thread.start()
        assert self.paused.wait(120), "the run never reached its derivation"

    def _run(self, job, tags):
        self.result = job.execute_in_process(instance=self.instance, tags=tags, raise_on_error=False)

    def finish(self):
        """Let the run derive h1/h4 and wait until it has finished."""
        if not self.release.is_set():
            self.release.set()
            self.thread.join(120)
            assert self.result is not None and self.result.success


def finish_between_reads(run, monkeypatch, module, names):
    """Whichever of these module functions a sensor calls second, the run finishes just before it."""
    calls = []
    for name in names:
        original = getattr(module, name)

        def wrapped(*args, _original=original, **kwargs):
            calls.append(_original)
            if len(calls) == 2:
                run.finish()
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)


def requested_derived(run_requests):
    """The h1/h4 boxes requested that overlap the run's sessions."""
    out = set()
    for request in run_requests:
        first = request.tags["dagster/asset_partition_range_start"].split("|")[0]
        last = request.tags["dagster/asset_partition_range_end"].split("|")[0]
        overlaps = first <= SESSIONS[-1].isoformat() and last >= SESSIONS[0].isoformat()
        if set(request.asset_selection or ()) & DERIVED and overlaps:
            out.add((first, last))
    return out


def sensors_that_derive(defs):
    """The automation sensors whose target includes h1/h4."""
    graph = defs.resolve_asset_graph()
    out = []
    for sensor in defs.sensors:
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            if sensor.asset_selection.resolve(graph) & DERIVED:
                out.append(sensor)
    return out


@pytest.fixture
def setup(tmp_path, pg_url):
    settings = Settings(data_dir=tmp_path, database_url=pg_url, history_start=date(2024, 1, 1))
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        add_symbols(instance, pg_url, SYMBOLS)
        yield settings, defs, instance


@pytest.mark.postgres
def test_the_gap_sensor_never_asks_again_for_what_a_finishing_run_derives(setup, pg_url, monkeypatch):
    settings, defs, instance = setup
    run = PausedRun(defs, instance, monkeypatch)
    try:
        assert IN_RUN <= set(instance.get_materialized_partitions(dg.AssetKey("bars_m15")))
        finish_between_reads(run, monkeypatch, gap_sensor_module, ["find_gaps", "in_flight_partitions"])
        sensor = gap_sensor_module.build_gap_sensor(settings.history_start, clock=lambda: NOW)
        context = dg.build_sensor_context(instance=instance, resources={"store": StoreResource(database_url=pg_url)})
        requests = sensor(context)
        asked = sorted(requested_derived(requests if isinstance(requests, list) else []))
    finally:
        run.finish()
    assert asked == [], f"h1/h4 requested again for partitions the run derived: {asked}"


def test_h1_h4_are_not_derived_by_declarative_automation(setup):
    """The runs that write m15 derive h1/h4 (gap runs, schedules, UI backfills of the group), and
    the gap sensor's sweep derives what a run left (m15 written alone). An automation sensor would
    be a third path with the same race, and at 252,000 partitions its tick outlives the daemon's
    60 s limit."""
    _settings, defs, _instance = setup
    assert sensors_that_derive(defs) == []
    assert all(defs.resolve_assets_def(k).automation_conditions_by_key.get(k) is None for k in DERIVED)

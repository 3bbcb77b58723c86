"""The schedules driven by the scheduler daemon's own iteration (dagster._scheduler.scheduler.
launch_scheduled_runs) on a real instance whose run launcher executes each run synchronously: a
tick at 10:00 New York produces the intraday run and it succeeds; the tick after the close (plus
the delay) finalizes the session once; a Saturday produces nothing."""

import contextlib
import logging
import os
from datetime import date

import dagster as dg
import pandas as pd
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, shared_engine
from tests.orchestration.conftest import add_symbols

NY = "America/New_York"
SESSION = date(2024, 11, 26)


@dg.definitions
def schedule_defs() -> dg.Definitions:
    """The code location the scheduler daemon loads: the project's own definitions."""
    return build_definitions(
        Settings(data_dir=os.environ["SCHEDULE_TEST_DATA_DIR"], database_url=os.environ["SCHEDULE_TEST_URL"])
    )


@pytest.fixture
def daemon_instance():
    with dg.instance_for_test(synchronous_run_launcher=True, synchronous_run_coordinator=True) as instance:
        yield instance


@contextlib.contextmanager
def scheduler_daemon(instance, store_url, tmp_path, monkeypatch):
    """Yields tick(at): one iteration of the scheduler daemon with the clock frozen at `at`."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    monkeypatch.setenv("SCHEDULE_TEST_URL", store_url)
    monkeypatch.setenv("SCHEDULE_TEST_DATA_DIR", str(tmp_path))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute="schedule_defs"), location_name="schedules"
    )
    logger = logging.getLogger("schedule_daemon_test")
    iteration_times = {}
    with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:

        def tick(at: str) -> None:
            now = pd.Timestamp(at, tz=NY).tz_convert("UTC").to_pydatetime()
            with freeze_time(now):
                list(launch_scheduled_runs(context, logger, now, iteration_times))

        yield tick


def runs_of(instance, schedule):
    return list(reversed(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/schedule_name": schedule}))))


def test_the_daemon_ticks_the_schedules_and_their_runs_succeed(daemon_instance, store_url, tmp_path, monkeypatch):
    instance = daemon_instance
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    with scheduler_daemon(instance, store_url, tmp_path, monkeypatch) as tick:
        tick("2024-11-26 09:50")  # the daemon starts: schedules begin from here
        tick("2024-11-26 10:01")  # the 10:00 tick is due
        intraday = runs_of(instance, "intraday_refresh")
        assert len(intraday) == 1 and intraday[0].status == dg.DagsterRunStatus.SUCCESS
        assert intraday[0].tags["dagster/asset_partition_range_start"] == "2024-11-26|AAPL"
        assert intraday[0].tags["dagster/asset_partition_range_end"] == "2024-11-26|MSFT"

        tick("2024-11-26 16:50")  # after the close, plus the end-of-day delay (30 min)
        eod = runs_of(instance, "end_of_day")
        assert len(eod) == 1 and eod[0].status == dg.DagsterRunStatus.SUCCESS
        tick("2024-11-26 17:20")
        assert len(runs_of(instance, "end_of_day")) == 1  # once per session

        tick("2024-11-30 10:01")  # a Saturday: its ticks skip (the daemon may catch up a missed weekday tick)
    days = [r.tags["dagster/asset_partition_range_start"][:10] for r in runs_of(instance, "intraday_refresh")]
    assert "2024-11-30" not in days and all(d in ("2024-11-26", "2024-11-27", "2024-11-29") for d in days), days
    ledger = BarStore(shared_engine(store_url)).coverage()
    final = ledger[ledger.session == SESSION]
    assert set(final.timeframe) == {t.value for t in Timeframe} and set(final.symbol) == {"AAPL", "MSFT"}
    assert set(final.status) == {"complete"}  # finalized: every timeframe, every symbol

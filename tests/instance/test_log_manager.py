"""A range run's batched events handed straight to the instance (instance/log_manager.py): the same
entries as through Python's logging, taken only when nothing else would see the record."""

from __future__ import annotations

import logging
import re
from datetime import date

import dagster as dg
import pytest
from dagster._core.events import (
    DagsterEvent,
    DagsterEventBatchMetadata,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.log_manager import (
    LOG_RECORD_EVENT_ATTR,
    DagsterLogHandler,
    DagsterLogManager,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import serialize_value

from backfill_dagster.definitions import build_definitions
from backfill_dagster.instance import log_manager
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.settings import Settings
from tests.orchestration.conftest import add_symbols

BOX = (("AAPL", date(2024, 11, 22)), ("MSFT", date(2024, 11, 27)))  # 2 symbols x 4 sessions


@pytest.fixture
def defs(tmp_path, sqlite_url):  # the shortcut is the storage's business no more than the store's
    return build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))


@pytest.fixture
def store_url(sqlite_url):
    return sqlite_url


def console_at(level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": level}}}}


@pytest.fixture
def dagster_path(monkeypatch):
    """Choose the path per test; count the records Dagster's run handler sees, by event type."""
    seen: list[str] = []
    emit = DagsterLogHandler.emit

    def counting_emit(self, record):
        event = getattr(record, LOG_RECORD_EVENT_ATTR, None)
        if event is not None:
            seen.append(event.event_type_value)
        return emit(self, record)

    monkeypatch.setattr(DagsterLogHandler, "emit", counting_emit)

    def choose(shortcut: bool) -> list[str]:
        (log_manager.install if shortcut else log_manager.uninstall)()
        seen.clear()
        return seen

    yield choose
    log_manager.install()


def _range_run(defs, store_url, level: str):
    with dg.instance_for_test() as instance:
        add_symbols(instance, store_url, ["AAPL", "MSFT"])
        job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
        result = job.execute_in_process(instance=instance, tags=range_tags(*BOX), run_config=console_at(level))
        assert result.success
        entries = [
            entry for entry in instance.all_logs(result.run_id)
            if entry.dagster_event and entry.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
        ]
        return result.run_id, entries


def _comparable(run_id: str, entry) -> tuple:
    """Everything the entry holds but its time; masked: the run's id, which is also Dagster's default
    code version, and the data version, a hash of the code version."""
    event = serialize_value(entry.dagster_event).replace(run_id, "<run>")
    return (
        entry.level, entry.user_message, entry.step_key, entry.job_name, entry.run_id == run_id, entry.error_info,
        re.sub(r'("dagster/data_version": )"[0-9a-f]{64}"', r"\1<hash>", event),
    )


def test_batched_events_are_stored_as_dagsters_logging_stores_them(defs, store_url, dagster_path):
    through_logging = dagster_path(False)
    run_a, dagster_entries = _range_run(defs, store_url, "WARNING")
    assert through_logging.count("ASSET_MATERIALIZATION") == 8  # the control: the counter sees them
    shortcut = dagster_path(True)
    run_b, our_entries = _range_run(defs, store_url, "WARNING")
    assert "ASSET_MATERIALIZATION" not in shortcut  # they took the shortcut ...
    assert "STEP_START" in shortcut  # ... and only they: a run's other events keep Dagster's path
    assert len(our_entries) == 8
    assert sorted(_comparable(run_b, e) for e in our_entries) == sorted(_comparable(run_a, e) for e in dagster_entries)
    for entry in our_entries:  # stored with the time the event was logged, in order
        assert abs(entry.timestamp - our_entries[0].timestamp) < 60
    assert [e.timestamp for e in our_entries] == sorted(e.timestamp for e in our_entries)


def test_a_logger_that_wants_debug_gets_every_event_through_dagsters_path(defs, store_url, dagster_path, capfd):
    seen = dagster_path(True)
    _, entries = _range_run(defs, store_url, "DEBUG")
    assert seen.count("ASSET_MATERIALIZATION") == 8 and len(entries) == 8
    assert capfd.readouterr().err.count("ASSET_MATERIALIZATION") == 8  # the console printed each one


@pytest.fixture
def manager(instance):
    return DagsterLogManager.create(loggers=[], instance=instance, dagster_run=DagsterRun(job_name="job", run_id="r1"))


def test_the_shortcut_only_when_the_instances_handler_is_all_that_would_see_the_record(instance, manager):
    listener = manager._dagster_handler._handlers[0]
    assert log_manager.instance_handler(manager, logging.DEBUG) is listener

    chatty = logging.getLogger("test_log_manager.chatty")
    chatty.setLevel(logging.DEBUG)
    with_logger = DagsterLogManager.create(loggers=[chatty], instance=instance)
    assert log_manager.instance_handler(with_logger, logging.DEBUG) is None
    chatty.setLevel(logging.INFO)  # a logger that drops DEBUG does not need the record
    assert log_manager.instance_handler(with_logger, logging.DEBUG) is not None

    other = DagsterLogManager.create(loggers=[], handlers=[logging.NullHandler()], instance=instance)
    assert log_manager.instance_handler(other, logging.DEBUG) is None  # e.g. a python_logs handler

    manager.addFilter(lambda record: True)
    assert log_manager.instance_handler(manager, logging.DEBUG) is None
    manager.filters.clear()
    manager._dagster_handler._local_thread_context.should_capture = False  # inside another emit
    assert log_manager.instance_handler(manager, logging.DEBUG) is None
    manager._dagster_handler._local_thread_context.should_capture = True
    assert log_manager.instance_handler(manager, logging.DEBUG) is listener


def test_an_event_the_instance_cannot_store_is_said_and_raised(instance, manager, monkeypatch, capsys):
    def broken(event, batch_metadata=None):
        raise RuntimeError("event log down")

    monkeypatch.setattr(instance, "handle_new_event", broken)
    dagster_event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value, "job",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization("bars_m15")),
    )
    with pytest.raises(RuntimeError, match="event log down"):
        log_manager.log_dagster_event(manager, logging.DEBUG, "m", dagster_event, DagsterEventBatchMetadata("b", True))
    assert "Exception while writing logger call to event log: event log down" in capsys.readouterr().err
    assert manager._dagster_handler._local_thread_context.should_capture  # capture is back on

"""A range run's per-partition events handed straight to the instance, not through Python's logging.

Dagster stores every event of a step by logging it: a range run of 5,000 partitions logs 5,000
materializations, and each goes through the `logging` machinery before it reaches the one place
that keeps it — a `LogRecord`; the run's handler turning it into a Dagster record (a message
string, a uuid, an ISO timestamp); for every user logger, the console logger included, a second
`LogRecord` built only to recover the call's `extra`, handed to a logger that drops DEBUG at once;
and at last the instance's handler, which builds an `EventLogEntry` from it and calls
`instance.handle_new_event`. About a third of Dagster's own cost per partition (README,
"Benchmarks").

When no logger and no other handler would take the record, that last step is all the record is
for. `log_dagster_event` then builds the same `EventLogEntry` (level, message, run, step, job,
event, time) and hands it to the instance under the same locks and with the same capture guard;
otherwise — a logger enabled at the event's level (a DEBUG console, a user's @logger), a handler
from `python_logs`, a filter anywhere — the record goes Dagster's way, untouched. Only batched
events take the shortcut: the per-partition materializations and observations of a range output
(Dagster gives those, and only those, batch metadata); a run's other events, a few dozen, keep
Dagster's path. Same entries as Dagster's path: tests/instance/test_log_manager.py; the internals
it mirrors are pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import sys
import time

from dagster._core.events.log import EventLogEntry
from dagster._core.instance.types import _EventListenerLogHandler
from dagster._core.log_manager import DagsterLogHandler, DagsterLogManager
from dagster._core.utils import coerce_valid_log_level

_dagster_log_dagster_event = DagsterLogManager.log_dagster_event


def instance_handler(manager: DagsterLogManager, level: int) -> _EventListenerLogHandler | None:
    """The instance's handler, if a record at `level` would reach it and nothing else; else None."""
    if manager.disabled or manager.filters or (manager.propagate and manager.parent is not None):
        return None
    dagster_handler = manager._dagster_handler
    if manager.handlers != [dagster_handler] or dagster_handler.filters or level < dagster_handler.level:
        return None
    if not getattr(dagster_handler._local_thread_context, "should_capture", True):
        return None  # inside another record's emit: Dagster drops the record, let it
    (handler, *others) = dagster_handler._handlers or (None,)
    if others or type(handler) is not _EventListenerLogHandler or handler.filters or level < handler.level:
        return None
    if any(logger.isEnabledFor(level) for logger in dagster_handler._loggers):
        return None
    return handler


def log_dagster_event(self: DagsterLogManager, level, msg, dagster_event, batch_metadata=None) -> None:
    """DagsterLogManager.log_dagster_event, with a batched event handed to the instance directly."""
    if batch_metadata is None:
        return _dagster_log_dagster_event(self, level, msg, dagster_event, batch_metadata)
    level = coerce_valid_log_level(level)
    handler = instance_handler(self, level)
    if handler is None:
        return _dagster_log_dagster_event(self, level, msg, dagster_event, batch_metadata)
    dagster_handler: DagsterLogHandler = self._dagster_handler
    metadata = dagster_handler.metadata
    # What _EventListenerLogHandler.emit builds from the record (construct_event_record).
    entry = EventLogEntry(
        level=level,
        user_message=str(msg),
        run_id=metadata["run_id"],
        timestamp=time.time(),
        step_key=metadata["step_key"] or dagster_event.step_key,
        job_name=metadata["job_name"],
        dagster_event=dagster_event,
        error_info=None,
    )
    context = dagster_handler._local_thread_context
    with dagster_handler.lock, handler.lock:
        context.should_capture = False  # what the storage logs meanwhile is not captured as run logs
        try:
            handler._instance.handle_new_event(entry, batch_metadata=batch_metadata)
        except Exception as e:  # as Dagster's handler: said on stderr, raised (a system event)
            sys.stderr.write(f"Exception while writing logger call to event log: {e}\n")
            raise
        finally:
            context.should_capture = True


def install() -> None:
    """Route batched events of this process's runs straight to the instance (idempotent)."""
    DagsterLogManager.log_dagster_event = log_dagster_event


def uninstall() -> None:
    """Dagster's own path for every event (tests compare the two)."""
    DagsterLogManager.log_dagster_event = _dagster_log_dagster_event


"""Serialize a range run's materializations as Dagster does, byte for byte, sharing the work.

A range run's materializations of one asset differ only in their partition, their tags (partition
keys, data version) and their timestamp; Dagster's `serialize_value` packs each whole anyway
(~60 us of its ~80 us per event, most of the event log's Python time in a 5,000-partition run).
Here an event is packed once with those three fields masked, the JSON split around the masks,
and each event of the same shape is the pieces with its own three values JSON-encoded in between.
An event is only rendered from a template it equals once masked, and each template's first event
is checked against `serialize_value`; anything else goes through `serialize_value`.
tests/instance/test_event_log.py compares every event of real runs with `serialize_value`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from dagster._core.events.log import EventLogEntry
from dagster._serdes import serialize_value

_PARTITION = "\u0000backfill-dagster-partition\u0000"
_TAGS = "\u0000backfill-dagster-tags\u0000"
_TIMESTAMP = -1.2345678901234567e-289  # a float no event carries


def _masked(event: EventLogEntry) -> EventLogEntry | None:
    """The event with partition, tags and timestamp replaced by masks; None if not a plain
    materialization (those are serialized whole)."""
    dagster_event = event.dagster_event
    data = getattr(dagster_event, "event_specific_data", None)
    materialization = getattr(data, "materialization", None)
    if materialization is None or not isinstance(materialization.tags, (dict, type(None))):
        return None
    return event._replace(
        timestamp=_TIMESTAMP,
        dagster_event=dagster_event._replace(
            event_specific_data=data._replace(
                materialization=materialization._replace(partition=_PARTITION, tags=_TAGS)
            )
        ),
    )


def _values(event: EventLogEntry) -> dict[str, str]:
    materialization = event.dagster_event.event_specific_data.materialization
    return {
        "partition": json.dumps(materialization.partition),
        "tags": json.dumps(materialization.tags, sort_keys=True),
        "timestamp": json.dumps(event.timestamp),
    }


class _Template:
    """The JSON of a masked event, cut where the three values go; unusable (every event of its
    shape serialized whole) unless it renders its first event exactly as `serialize_value`."""

    def __init__(self, masked: EventLogEntry, first: EventLogEntry):
        self.masked = masked
        self.pieces: list[str] = []
        self.fields: list[str] = []
        try:
            self._cut(serialize_value(masked))
            self.usable = self.render(first) == serialize_value(first)
        except (ValueError, TypeError):
            self.usable = False

    def _cut(self, text: str) -> None:
        marks = {"partition": json.dumps(_PARTITION), "tags": json.dumps(_TAGS), "timestamp": json.dumps(_TIMESTAMP)}
        found = []
        for field, mark in marks.items():
            if text.count(mark) != 1:
                raise ValueError(f"a mask appears {text.count(mark)} times")
            found.append((text.index(mark), field, mark))
        position = 0
        for at, field, mark in sorted(found):
            self.pieces.append(text[position:at])
            self.fields.append(field)
            position = at + len(mark)
        self.pieces.append(text[position:])

    def render(self, event: EventLogEntry) -> str:
        values = _values(event)
        out: list[Any] = [self.pieces[0]]
        for field, piece in zip(self.fields, self.pieces[1:]):
            out += (values[field], piece)
        return "".join(out)


def serialize_events(events: Iterable[EventLogEntry]) -> list[str]:
    """`serialize_value(event)` for each event."""
    out = []
    template: _Template | None = None
    for event in events:
        masked = _masked(event)
        if masked is None:
            out.append(serialize_value(event))
            continue
        if template is None or masked != template.masked:
            template = _Template(masked, event)
        out.append(template.render(event) if template.usable else serialize_value(event))
    return out

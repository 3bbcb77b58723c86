"""A backfill of sessions x symbols run as boxes of many symbols, not one run per symbol.

Dagster forms a backfill's runs in the daemon (`build_run_requests_with_backfill_policies`): for
a two-dimensional partitions definition it holds one dimension constant and makes a range of the
other (`DefaultPartitionsSubset.get_partition_key_ranges`), so 500 symbols x 504 sessions become
500 runs, one per symbol, each paying a worker start and its planning, and no provider page ever
carries two runs' symbols. A range run over two dimensions is a box (every symbol from the first
to the last in the dynamic partitions' order, times every session from the first to the last), and
the assets already fetch a box in few pages; Dagster just never forms one.

This replaces the function that turns one asset group's partitions into run requests: for a
two-dimensional partitions definition with `BackfillPolicy.single_run()` (one run per range; a box
is a range), the partitions are cut into the fewest boxes of at most BACKFILL_BOX_PARTITIONS
(12,000: 23 symbols x 504 sessions, so 500 symbols are 22 runs) that cover them exactly (domain/boxes.py: the rule
the gap sensor's runs follow), and each box is one range run with Dagster's own range tags, so the
partitions view, failed partitions, retries and cancelling see ordinary range runs. Every other
case (one dimension, another policy, a key it cannot place) is Dagster's own code, unchanged. Without
this module the same assets backfill as stock Dagster does: one run per symbol.

Installed in every process that loads the project's instance plug-ins: the daemon loads the event
log storage (production) or the scheduler (the embedded instance, scheduler.py), which import this.
The Dagster functions it replaces and calls are pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import os
from collections import defaultdict

from dagster._core.definitions import automation_tick_evaluation_context as run_requests
from dagster._core.definitions.backfill_policy import BackfillPolicyType
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition import (
    MultiPartitionsDefinition,
    TimeWindowPartitionsDefinition,
)
from dagster._core.definitions.partitions.definition.multi import MultiPartitionKey

from backfill_dagster.domain.boxes import cover_across_rows, cover_with_boxes

_dagster_build_run_requests_with_backfill_policy = run_requests._build_run_requests_with_backfill_policy


def box_ranges(partition_keys, partitions_def, dynamic_partitions_store, max_partitions: int,
               shape: str = "symbols"):
    """(start key, end key) of each box covering `partition_keys` exactly, newest sessions first;
    None when a key cannot be placed (Dagster's own code then says what is wrong with it). `shape`
    (box_shape()): "symbols", few symbols over many sessions; "sessions", many symbols over few
    sessions."""
    dims = list(partitions_def.partitions_defs)
    with partition_loading_context(dynamic_partitions_store=dynamic_partitions_store):
        keys_of = [list(dim.partitions_def.get_partition_keys()) for dim in dims]
    # Columns: the time dimension (contiguous sessions make a range); rows: the other one.
    times = [i for i, dim in enumerate(dims) if isinstance(dim.partitions_def, TimeWindowPartitionsDefinition)]
    col = times[0] if len(times) == 1 else (0 if len(keys_of[0]) >= len(keys_of[1]) else 1)
    row = 1 - col
    position = [{key: i for i, key in enumerate(keys)} for keys in keys_of]
    columns_by_row: dict[int, list[int]] = defaultdict(list)
    for key in partition_keys:
        # A multi-partition key is its dimensions' keys joined by '|' in partitions_defs order.
        parts = str(key).split("|")
        if len(parts) != 2:
            return None
        r, c = position[row].get(parts[row]), position[col].get(parts[col])
        if r is None or c is None:
            return None
        columns_by_row[r].append(c)
    cover = cover_across_rows if shape == "sessions" else cover_with_boxes
    boxes = sorted(cover(columns_by_row, max_cells=max_partitions), key=lambda b: (-b[3], b[0], -b[2]))

    def key(r: int, c: int) -> str:
        return str(MultiPartitionKey({dims[row].name: keys_of[row][r], dims[col].name: keys_of[col][c]}))

    return [(key(first, lo), key(last, hi)) for first, last, lo, hi in boxes]


def build_run_requests_with_backfill_policy(
    asset_keys, asset_check_keys, backfill_policy, partition_keys, partitions_def, tags, dynamic_partitions_store
):
    """Dagster's `_build_run_requests_with_backfill_policy`, with boxes for two dimensions."""
    if (
        isinstance(partitions_def, MultiPartitionsDefinition)
        and len(partitions_def.partitions_defs) == 2
        and backfill_policy.policy_type == BackfillPolicyType.SINGLE_RUN
        and box_partitions()
    ):
        ranges = box_ranges(partition_keys, partitions_def, dynamic_partitions_store, box_partitions(), box_shape())
        if ranges is not None:
            return [
                run_requests._build_run_request_for_partition_key_range(
                    list(asset_keys), list(asset_check_keys), start, end, tags
                )
                for start, end in ranges
            ]
    return _dagster_build_run_requests_with_backfill_policy(
        asset_keys, asset_check_keys, backfill_policy, partition_keys, partitions_def, tags,
        dynamic_partitions_store,
    )


# Partitions in one box run: 23 symbols x 504 sessions (two years). A box is fetched in pages of
# many symbols and pays its worker start and planning once; much larger boxes only lengthen the
# run a failure repeats and the daemon's work creating it. Read from the daemon's environment;
# 0 keeps Dagster's own run formation (one run per symbol): the baseline of
# bench/scale_backfill.py, and a way back if a Dagster release moves what this replaces.
BOX_PARTITIONS_VARIABLE = "BACKFILL_BOX_PARTITIONS"
DEFAULT_BOX_PARTITIONS = 12_000
MAX_BOX_PARTITIONS = 1_000_000


def box_partitions(environ=os.environ) -> int:
    """The largest box a backfill run covers (0: one run per symbol, as Dagster forms them)."""
    raw = environ.get(BOX_PARTITIONS_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_BOX_PARTITIONS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_BOX_PARTITIONS:
        raise ValueError(f"{BOX_PARTITIONS_VARIABLE}={raw!r}: use a whole number of partitions from 0 (one run "
                         f"per symbol) to {MAX_BOX_PARTITIONS:,}; {DEFAULT_BOX_PARTITIONS:,} by default")
    return value


# Which way a box is long. A REST provider is asked for a symbol (or a page of symbols) over a range
# of dates: a box of few symbols over many sessions fetches each symbol's history in few requests.
# Flat files hold one session of every symbol: a box of every symbol over few sessions reads each
# session's file in one run (500 symbols x 24 sessions a box), where the other shape would read
# every file in every run. By default the shape follows the first provider of BACKFILL_PROVIDERS.
BOX_SHAPE_VARIABLE = "BACKFILL_BOX_SHAPE"
BOX_SHAPES = ("symbols", "sessions")
SESSION_BOX_PROVIDERS = ("flatfiles",)  # providers that serve a session for every symbol at once


def box_shape(environ=os.environ) -> str:
    """"symbols" (few symbols over many sessions a box) or "sessions" (many symbols over few)."""
    raw = environ.get(BOX_SHAPE_VARIABLE, "").strip().lower()
    if raw:
        if raw not in BOX_SHAPES:
            raise ValueError(f"{BOX_SHAPE_VARIABLE}={raw!r}: use 'symbols' (few symbols over many sessions a "
                             "run, for REST providers) or 'sessions' (every symbol over few sessions, for flat "
                             "files); unset, it follows the first of BACKFILL_PROVIDERS")
        return raw
    first = environ.get("BACKFILL_PROVIDERS", "").split(",")[0].strip().lower()
    return "sessions" if first in SESSION_BOX_PROVIDERS else "symbols"


def install() -> None:
    """Form backfill runs as boxes in this process (idempotent)."""
    run_requests._build_run_requests_with_backfill_policy = build_run_requests_with_backfill_policy


def uninstall() -> None:
    """Dagster's own run formation again (tests compare the two)."""
    run_requests._build_run_requests_with_backfill_policy = _dagster_build_run_requests_with_backfill_policy


box_partitions(), box_shape()  # a bad value refuses as the daemon loads the instance, not at its first backfill
install()

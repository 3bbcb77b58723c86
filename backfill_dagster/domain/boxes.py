"""Boxes: the fewest range runs that cover a set of partitions exactly.

A partition is a cell of a grid: a row (a symbol, by its position in the symbol partitions' order)
and a column (a session, by its index among the sessions). A Dagster range run over two dimensions
is a box, every row from its first to its last times every column from its first to its last, so
a set of partitions is run as boxes that cover it exactly (nothing outside it, nothing twice).

The rule: each row's columns become contiguous runs, cut into chunks of at most `max_columns`
aligned on the newest column (so rows with the same gaps get the same chunks); rows adjacent in
the order with the same chunk share a box, up to `max_cells` cells. A UI backfill of 500 symbols x
504 sessions is then 500 x 504 / `max_cells` boxes, not one run per symbol.

Which way a box is long depends on how the provider is asked. A REST provider answers one symbol
(or a page of symbols) over a range of dates, so boxes are few symbols over many sessions (the rule
above). Flat files hold one session for every symbol, so a box should be every symbol over few
sessions: `cover_across_rows` cuts the same cells the other way (each column's rows in one box
where they fit), so each session's file is read by one run.

Pure: plain integers in, (first row, last row, first column, last column) out. The gap sensor's
planning (gap_planning.py) and the backfill daemon's run requests (instance/backfill_runs.py) both
cut their partitions with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

Box = tuple[int, int, int, int]  # first row, last row, first column, last column (inclusive)


def contiguous_runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers as (first, last) runs: [1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    out: list[tuple[int, int]] = []
    for value in sorted(set(values)):
        if out and value == out[-1][1] + 1:
            out[-1] = (out[-1][0], value)
        else:
            out.append((value, value))
    return out


def cover_with_boxes(
    columns_by_row: Mapping[int, Iterable[int]], *, max_cells: int, max_columns: int | None = None
) -> list[Box]:
    """Boxes covering exactly the cells (row, column) given, each at most `max_cells` cells (a
    single row's column run longer than that is cut) and `max_columns` columns wide."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1, not {max_cells}")
    step = max_cells if max_columns is None else min(max_columns, max_cells)
    if step < 1:
        raise ValueError(f"max_columns must be at least 1, not {max_columns}")
    rows_by_chunk: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row, columns in columns_by_row.items():
        for lo, hi in contiguous_runs(columns):
            top = hi
            while top >= lo:
                rows_by_chunk[(max(lo, top - step + 1), top)].append(row)
                top -= step
    boxes = []
    for (lo, hi), rows in rows_by_chunk.items():
        height = max(1, max_cells // (hi - lo + 1))
        for first, last in contiguous_runs(rows):
            for start in range(first, last + 1, height):
                boxes.append((start, min(start + height - 1, last), lo, hi))
    return boxes


def cover_across_rows(columns_by_row: Mapping[int, Iterable[int]], *, max_cells: int) -> list[Box]:
    """Boxes covering exactly the cells (row, column) given, each at most `max_cells` cells, cut
    column-first: a column's rows share one box where they fit (500 rows x 504 columns at 12,000
    cells: 21 boxes of 500 rows x 24 columns), so every column is in as few boxes as possible."""
    rows_by_column: dict[int, list[int]] = defaultdict(list)
    for row, columns in columns_by_row.items():
        for column in columns:
            rows_by_column[column].append(row)
    return [(first, last, lo, hi) for lo, hi, first, last in cover_with_boxes(rows_by_column, max_cells=max_cells)]

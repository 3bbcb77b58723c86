"""Boxes cover a set of partitions exactly, within their size bounds, and few of them."""

import random

import pytest

from backfill_dagster.domain.boxes import contiguous_runs, cover_across_rows, cover_with_boxes


def cells_of(boxes):
    out = []
    for first, last, lo, hi in boxes:
        out.extend((r, c) for r in range(first, last + 1) for c in range(lo, hi + 1))
    return out


def random_cells(rng):
    """A random set of cells and the same as columns by row."""
    wanted = {(r, c) for r in range(rng.randint(1, 30)) for c in range(rng.randint(1, 40)) if rng.random() < 0.7}
    rows: dict[int, list[int]] = {}
    for r, c in wanted:
        rows.setdefault(r, []).append(c)
    return wanted, rows


def test_contiguous_runs():
    assert contiguous_runs([8, 1, 2, 3, 7, 2]) == [(1, 3), (7, 8)]
    assert contiguous_runs([]) == []


def test_the_whole_market_is_a_few_boxes_not_one_run_per_symbol():
    grid = {row: range(504) for row in range(500)}  # 500 symbols x 504 sessions
    boxes = cover_with_boxes(grid, max_cells=12_000)
    assert len(boxes) == 22  # 23 symbols x 504 sessions each, the last 17
    assert all((last - first + 1) * (hi - lo + 1) <= 12_000 for first, last, lo, hi in boxes)
    assert sorted(cells_of(boxes)) == [(r, c) for r in range(500) for c in range(504)]


def test_cut_across_rows_every_column_is_in_one_box_when_its_rows_fit():
    # flat files: a session's file serves every symbol, so a box is every symbol over few sessions
    grid = {row: range(504) for row in range(500)}
    boxes = cover_across_rows(grid, max_cells=12_000)
    assert len(boxes) == 21  # 500 symbols x 24 sessions each
    assert all(first == 0 and last == 499 for first, last, _, _ in boxes)
    assert sorted(cells_of(boxes)) == [(r, c) for r in range(500) for c in range(504)]
    # more rows than a box holds: each column is cut into as few boxes as the bound allows
    wide = cover_across_rows({row: range(3) for row in range(25)}, max_cells=10)
    assert sorted(cells_of(wide)) == [(r, c) for r in range(25) for c in range(3)]
    assert all(sum(1 for b in wide if b[2] <= c <= b[3]) == 3 for c in range(3))


@pytest.mark.parametrize("seed", range(20))
def test_cut_across_rows_covers_any_set_exactly_once_within_the_bound(seed):
    rng = random.Random(seed)
    wanted, rows = random_cells(rng)
    max_cells = rng.randint(1, 200)
    covered = cells_of(cover_across_rows(rows, max_cells=max_cells))
    assert len(covered) == len(set(covered)) and set(covered) == wanted
    for first, last, lo, hi in cover_across_rows(rows, max_cells=max_cells):
        assert (last - first + 1) * (hi - lo + 1) <= max_cells


@pytest.mark.parametrize("seed", range(20))
def test_any_set_is_covered_exactly_once_within_the_bounds(seed):
    rng = random.Random(seed)
    wanted, rows = random_cells(rng)
    max_cells, max_columns = rng.randint(1, 200), rng.choice([None, 3, 10])
    boxes = cover_with_boxes(rows, max_cells=max_cells, max_columns=max_columns)
    covered = cells_of(boxes)
    assert len(covered) == len(set(covered))  # nothing twice
    assert set(covered) == wanted  # nothing outside, nothing missing
    for first, last, lo, hi in boxes:
        assert (last - first + 1) * (hi - lo + 1) <= max_cells or first == last
        assert hi - lo + 1 <= min(max_columns or max_cells, max_cells)


def test_rows_with_the_same_columns_share_a_box_and_a_hole_splits_it():
    # rows 0-2 want columns 0-9; row 3 is not wanted (a symbol outside the selection); row 4 too
    boxes = cover_with_boxes({0: range(10), 1: range(10), 2: range(10), 4: range(10)}, max_cells=1000)
    assert sorted(boxes) == [(0, 2, 0, 9), (4, 4, 0, 9)]


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_cells"):
        cover_with_boxes({0: [0]}, max_cells=0)
    with pytest.raises(ValueError, match="max_columns"):
        cover_with_boxes({0: [0]}, max_cells=5, max_columns=0)

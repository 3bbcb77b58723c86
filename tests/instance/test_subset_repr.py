"""Large DefaultPartitionsSubsets are shown as their count and two keys (instance/subset_repr.py),
so the backfill daemon's debug f-string of a whole-market backfill stays short; small ones keep
Dagster's repr."""

from __future__ import annotations

from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset

import backfill_dagster.instance.event_log  # noqa: F401  (installs it, as the daemon's instance does)
from backfill_dagster.instance import subset_repr
from backfill_dagster.instance.subset_repr import LISTED_KEYS, short_repr


def keys(n: int) -> set[str]:
    return {f"2024-01-02|S{i:05d}" for i in range(n)}


def test_installed_where_the_instance_plug_ins_load():
    assert DefaultPartitionsSubset.__repr__ is short_repr


def test_small_subsets_keep_dagster_s_repr():
    for n in (0, 1, LISTED_KEYS):
        subset = DefaultPartitionsSubset(keys(n))
        assert repr(subset) == subset_repr._dagster_repr(subset) == f"DefaultPartitionsSubset(subset={subset.subset})"


def test_a_large_subset_is_its_count_and_two_of_its_keys():
    subset = DefaultPartitionsSubset(keys(252_000))
    text = repr(subset)
    assert text.startswith("DefaultPartitionsSubset(252000 keys: '2024-01-02|S") and text.endswith(", ...)")
    assert len(text) < 100
    shown = [part.strip(" '") for part in text.split(": ", 1)[1].removesuffix(", ...)").split(",")]
    assert len(shown) == 2 and set(shown) <= subset.subset
    # the daemon's f-string of a tuple holding it (AssetBackfillData is a NamedTuple) uses it too
    assert f"{(subset,)}" == f"({text},)"
    assert len(subset_repr._dagster_repr(subset)) > 4_000_000  # what Dagster's would have written

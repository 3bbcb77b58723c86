"""A short repr for large DefaultPartitionsSubsets, so the backfill daemon stops writing out every key.

Each asset backfill iteration ends with `logger.debug(f"Updated asset backfill data for ...:
{updated_backfill_data}")` (dagster/_core/execution/asset_backfill.py): the f-string is built
whatever the log level, and its repr of AssetBackfillData writes out every subset's keys. For 500
symbols x 504 sessions x 4 assets that is ~100 MB of text and 0.6-0.8 s per iteration, thrown away.
A subset of more than LISTED_KEYS keys is shown as its count and two of its keys instead; smaller
ones keep Dagster's repr. The two keys are the set's first two in iteration order, not the smallest
and largest: min() and max() of 252,000 keys cost ~55 ms a subset, a dozen subsets an iteration.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as backfill_runs.py is). Dagster's repr is pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

from itertools import islice

from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset

# Up to this many keys a subset is still written out in full, as Dagster does.
LISTED_KEYS = 20

_dagster_repr = DefaultPartitionsSubset.__repr__


def short_repr(subset: DefaultPartitionsSubset) -> str:
    """Dagster's repr up to LISTED_KEYS keys; beyond, `DefaultPartitionsSubset(252000 keys: 'A|x', 'B|y', ...)`."""
    count = len(subset.subset)
    if count <= LISTED_KEYS:
        return _dagster_repr(subset)
    examples = ", ".join(repr(str(key)) for key in islice(subset.subset, 2))
    return f"DefaultPartitionsSubset({count} keys: {examples}, ...)"


def install() -> None:
    """Short reprs of large subsets in this process (idempotent)."""
    DefaultPartitionsSubset.__repr__ = short_repr


def uninstall() -> None:
    """Dagster's repr again (tests compare the two)."""
    DefaultPartitionsSubset.__repr__ = _dagster_repr


install()

"""backfill_dagster: keep a database of OHLC bars for a watchlist of US stocks complete and fresh.

`dagster ... -m backfill_dagster` finds `defs` here. It is resolved lazily (PEP 562) so that the
pure core — calendar, bars, resampling, providers, the fake servers — imports without Dagster.
"""

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from backfill_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'backfill_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])

"""Data-quality rules behind the asset checks (pure: frames in, one verdict per partition out).

Three rules, each judged per partition (symbol x session); `summarize` folds a run's verdicts into
the one result per run and check that Dagster is shown (a result per partition does not scale):

- completeness: the m15 bars a closed, successfully fetched session holds against its bar grid.
  Illiquid symbols have no-trade intervals, which are not holes, so a low ratio is a warning,
  never an error.
- derived consistency: stored h1/h4 bars equal the stored m15 bars resampled now. They can only
  disagree if m15 was re-fetched without re-deriving, or someone edited the table: an error.
- daily agreement: the d1 bar bounds the session's regular-hours m15 bars (high >= max,
  low <= min, volume >= sum). Providers build daily bars from a consolidated tape that can differ
  a little from their minute bars, so a disagreement is a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.ledger import Partition
from backfill_dagster.domain.resample import resample_bars
from backfill_dagster.domain.timeframes import Timeframe


DEFAULT_COMPLETENESS_WARN_BELOW = 0.9
# Prices are stored as float64 and resampling only picks values (max/min/first/last), so equality
# is exact in practice; the tolerance only absorbs vwap's weighted mean and volume sums.
_RTOL = 1e-9
# d1 vs m15 compares figures from different feeds of one provider: allow for rounding of prices.
_PRICE_ATOL = 1e-6


class Severity(StrEnum):
    WARN = "WARN"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Verdict:
    """One rule's judgement of one partition."""

    partition: Partition
    passed: bool
    severity: Severity
    description: str
    metadata: Mapping[str, object] = field(default_factory=dict)


def completeness(
    ledger: pd.DataFrame, partitions: Iterable[Partition], *, warn_below: float = DEFAULT_COMPLETENESS_WARN_BELOW
) -> list[Verdict]:
    """m15 completeness of each partition from its coverage-ledger row (bars vs expected)."""
    if not 0.0 <= warn_below <= 1.0:
        raise ValueError(f"completeness threshold {warn_below!r} must be between 0 and 1")
    rows = {(r.symbol, r.session): r for r in ledger.itertuples(index=False)}
    out = []
    for partition in sorted(set(partitions)):
        row = rows.get(partition)
        if row is None:
            out.append(Verdict(partition, False, Severity.WARN, "never fetched: no coverage recorded"))
            continue
        meta = {"bars": int(row.bars), "expected": int(row.expected), "provider": row.provider or ""}
        if row.status == "failed":
            out.append(Verdict(partition, False, Severity.WARN, f"last fetch failed: {row.error}", meta))
            continue
        if row.status == "empty":
            out.append(Verdict(
                partition, False, Severity.WARN,
                f"no provider had bars for this closed session after {row.attempts} attempt(s) "
                f"(halted or delisted?): {row.error}",
                meta,
            ))
            continue
        ratio = row.bars / row.expected if row.expected else 1.0
        meta["completeness"] = round(float(ratio), 4)
        if not row.session_closed:
            out.append(Verdict(
                partition, True, Severity.WARN,
                f"session still open: {row.bars} bar(s) so far; judged once it has closed", meta,
            ))
        elif ratio < warn_below:
            out.append(Verdict(
                partition, False, Severity.WARN,
                f"{row.bars} of {row.expected} bars ({ratio:.0%}, below {warn_below:.0%}); "
                "no-trade intervals or a provider gap",
                meta,
            ))
        else:
            out.append(Verdict(partition, True, Severity.WARN, f"{row.bars} of {row.expected} bars ({ratio:.0%})", meta))
    return out


def derived_consistency(
    m15: pd.DataFrame,
    derived: pd.DataFrame,
    timeframe: Timeframe,
    partitions: Iterable[Partition],
    calendar: SessionCalendar,
    *,
    extended: bool = False,
) -> list[Verdict]:
    """Whether each partition's stored h1/h4 bars equal its stored m15 bars resampled."""
    timeframe = Timeframe.parse(timeframe)
    wanted = sorted(set(partitions))
    expected = resample_bars(m15, timeframe, calendar, extended=extended)
    expected = _with_partition(expected, calendar, timeframe)
    stored = _with_partition(derived, calendar, timeframe)

    merged = expected.merge(stored, on=["symbol", "session", "ts"], how="outer", suffixes=("_m15", "_stored"),
                            indicator=True)
    bad = merged["_merge"] != "both"
    both = ~bad
    for column in ("open", "high", "low", "close", "volume"):
        a, b = merged[f"{column}_m15"].to_numpy(float), merged[f"{column}_stored"].to_numpy(float)
        bad |= both & ~np.isclose(a, b, rtol=_RTOL, atol=0.0)
    a, b = merged["vwap_m15"].to_numpy(float), merged["vwap_stored"].to_numpy(float)
    bad |= both & ~(np.isclose(a, b, rtol=_RTOL) | (np.isnan(a) & np.isnan(b)))
    merged["bad"] = bad
    keys = ["symbol", "session"]

    # Per partition with frame operations, never a Python loop over groups: a box run checks
    # ~12,000 partitions, and a pandas group costs ~1 ms.
    merged["from_m15"] = merged["_merge"] != "right_only"
    merged["held"] = merged["_merge"] != "left_only"
    sums = merged.groupby(keys, sort=False)[["from_m15", "held"]].sum()
    counts: dict[Partition, tuple[int, int]] = {
        key: (int(a), int(b)) for key, a, b in zip(sums.index, sums["from_m15"], sums["held"], strict=True)
    }
    wrong = merged[merged["bad"]]
    wrong_counts = wrong.groupby(keys, sort=False).size()
    first = wrong.groupby(keys, sort=False).head(1)  # each partition's first disagreeing bar, in order
    problems: dict[Partition, str] = {}
    for symbol, session, ts, merge in zip(first["symbol"], first["session"], first["ts"], first["_merge"], strict=True):
        kind = {"left_only": "missing from the store", "right_only": "not in the resampled m15"}.get(
            str(merge), "differs from the resampled m15"
        )
        problems[(symbol, session)] = (
            f"{int(wrong_counts[(symbol, session)])} {timeframe.value} bar(s) disagree with m15; first at "
            f"{ts.isoformat()}: {kind}"
        )
    out = []
    for partition in wanted:
        resampled, held = counts.get(partition, (0, 0))
        meta = {"resampled_bars": resampled, "stored_bars": held}
        if partition in problems:
            out.append(Verdict(partition, False, Severity.ERROR, problems[partition], meta))
        else:
            out.append(Verdict(partition, True, Severity.ERROR, f"{held} bar(s) equal m15 resampled", meta))
    return out


def daily_agreement(
    m15: pd.DataFrame, d1: pd.DataFrame, partitions: Iterable[Partition], calendar: SessionCalendar
) -> list[Verdict]:
    """Whether each session's d1 bar bounds its regular-hours m15 bars."""
    wanted = sorted(set(partitions))
    regular = _with_partition(m15, calendar, Timeframe.M15)
    if len(regular):
        inside = calendar.locate(regular["ts"], Timeframe.M15, extended=False)["inside"].to_numpy(bool)
        regular = regular[inside]
    intraday = regular.groupby(["symbol", "session"]).agg(
        m15_high=("high", "max"), m15_low=("low", "min"), m15_volume=("volume", "sum"), m15_bars=("ts", "size")
    )
    daily = _with_partition(d1, calendar, Timeframe.D1).set_index(["symbol", "session"])[["high", "low", "volume"]]
    # Looked up in dicts, not with .loc: a box run checks ~12,000 partitions.
    intraday_of = dict(zip(intraday.index, intraday.itertuples(index=False), strict=True))
    daily_of = dict(zip(daily.index, daily.itertuples(index=False), strict=True))

    out = []
    for partition in wanted:
        m = intraday_of.get(partition)
        d = daily_of.get(partition)
        if m is None and d is None:
            out.append(Verdict(partition, True, Severity.WARN, "no trades in either timeframe"))
            continue
        if m is None:
            out.append(Verdict(partition, True, Severity.WARN, "no regular-hours m15 bars stored to compare with"))
            continue
        meta = {"m15_bars": int(m.m15_bars), "m15_high": float(m.m15_high), "m15_low": float(m.m15_low),
                "m15_volume": float(m.m15_volume)}
        if d is None:
            out.append(Verdict(partition, False, Severity.WARN, "m15 bars exist but no d1 bar is stored", meta))
            continue
        meta |= {"d1_high": float(d.high), "d1_low": float(d.low), "d1_volume": float(d.volume)}
        broken = []
        if d.high + _PRICE_ATOL < m.m15_high:
            broken.append(f"d1 high {d.high} < m15 max {m.m15_high}")
        if d.low - _PRICE_ATOL > m.m15_low:
            broken.append(f"d1 low {d.low} > m15 min {m.m15_low}")
        if d.volume * (1 + _RTOL) < m.m15_volume:
            broken.append(f"d1 volume {d.volume:.0f} < m15 sum {m.m15_volume:.0f}")
        if broken:
            out.append(Verdict(partition, False, Severity.WARN, "; ".join(broken), meta))
        else:
            out.append(Verdict(partition, True, Severity.WARN, "d1 bounds the regular-hours m15 bars", meta))
    return out


def _with_partition(frame: pd.DataFrame, calendar: SessionCalendar, timeframe: Timeframe) -> pd.DataFrame:
    """The frame with a `session` column (kept if the store already added it)."""
    if "session" in frame.columns:
        return frame
    out = frame.copy()
    if len(out) == 0:
        out["session"] = pd.Series([], dtype=object)
        return out
    out["session"] = calendar.locate(out["ts"], timeframe, extended=True)["session"].to_numpy()
    return out


# Failed partitions named in a summary; the rest are counted (per-partition detail: the ledger).
WORST_NAMED = 20


@dataclass(frozen=True)
class Summary:
    """One rule's judgement of many partitions: passed only if every partition passed."""

    checked: int
    failed: int
    severity: Severity
    worst: tuple[Verdict, ...]  # the worst failed partitions, at most WORST_NAMED

    @property
    def passed(self) -> bool:
        return self.failed == 0

    @property
    def description(self) -> str:
        if not self.checked:
            return "no partitions to check"
        if self.passed:
            return f"all {self.checked:,} partition(s) passed"
        first = self.worst[0]
        return (
            f"{self.failed:,} of {self.checked:,} partition(s) failed; worst: "
            f"{partition_name(first.partition)}: {first.description}"
        )


def summarize(verdicts: Sequence[Verdict], rule_severity: Severity, *, limit: int = WORST_NAMED) -> Summary:
    """Fold per-partition verdicts into one: counts, the worst failures by name, the gravest severity.

    Worst first: the lowest completeness (a failed or missing fetch counts as none), then by
    session and symbol, so the same data always names the same partitions.
    """
    bad = [v for v in verdicts if not v.passed]
    bad.sort(key=lambda v: (float(v.metadata.get("completeness", 0.0)), v.partition[1], v.partition[0]))
    severity = Severity.ERROR if any(v.severity is Severity.ERROR for v in bad) else rule_severity
    return Summary(checked=len(verdicts), failed=len(bad), severity=severity, worst=tuple(bad[:limit]))


def partition_name(partition: Partition) -> str:
    """The Dagster partition key of (symbol, session): `2024-11-21|MSFT`."""
    symbol, session = partition
    return f"{session.isoformat()}|{symbol}"

"""The pure data-quality rules behind the asset checks, including every way they fail."""

from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain import quality
from backfill_dagster.domain.resample import resample_bars
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from tests.conftest import aggregate_day

DAY = date(2024, 11, 21)
P = ("MSFT", DAY)


def regular_m15(calendar, symbol="MSFT", day=DAY):
    bars = synthetic_session_m15(symbol, day, calendar)
    lo, hi = calendar.window(day)
    return bars[(bars.ts >= lo) & (bars.ts < hi)].reset_index(drop=True)


def ledger(**row):
    base = dict(symbol="MSFT", session=DAY, status="complete", bars=26, expected=26, provider="demo:synthetic",
                session_closed=True, error=None)
    return pd.DataFrame([base | row])


@pytest.mark.parametrize(
    "row, passed, text",
    [
        ({}, True, "26 of 26 bars (100%)"),
        ({"bars": 24}, True, "24 of 26"),  # 92% is above the 90% default
        ({"bars": 5, "status": "partial"}, False, "5 of 26 bars (19%, below 90%)"),
        ({"status": "failed", "bars": 0, "error": "alpaca: 429"}, False, "last fetch failed: alpaca: 429"),
        ({"bars": 3, "session_closed": False, "status": "partial"}, True, "session still open"),
    ],
)
def test_completeness(row, passed, text):
    (verdict,) = quality.completeness(ledger(**row), [P])
    assert verdict.passed is passed and text in verdict.description
    assert verdict.severity is quality.Severity.WARN  # never an error: no-trade intervals are normal


def test_completeness_without_a_ledger_row_and_a_bad_threshold():
    (verdict,) = quality.completeness(ledger(), [("AAPL", DAY)])
    assert not verdict.passed and "never fetched" in verdict.description
    with pytest.raises(ValueError, match="between 0 and 1"):
        quality.completeness(ledger(), [P], warn_below=1.5)


def test_derived_consistency_detects_each_kind_of_disagreement(calendar):
    m15 = regular_m15(calendar)
    h1 = resample_bars(m15, Timeframe.H1, calendar)
    (ok,) = quality.derived_consistency(m15, h1, Timeframe.H1, [P], calendar)
    assert ok.passed and ok.metadata == {"resampled_bars": 7, "stored_bars": 7}

    changed = h1.copy()
    changed.loc[3, "volume"] += 1
    (bad,) = quality.derived_consistency(m15, changed, Timeframe.H1, [P], calendar)
    assert not bad.passed and bad.severity is quality.Severity.ERROR and "differs" in bad.description

    (missing,) = quality.derived_consistency(m15, h1.drop(index=6), Timeframe.H1, [P], calendar)
    assert not missing.passed and "missing from the store" in missing.description

    extra = pd.concat([h1, h1.iloc[[0]].assign(ts=h1.ts.iloc[0] + pd.Timedelta(minutes=15))])
    (stray,) = quality.derived_consistency(m15, extra, Timeframe.H1, [P], calendar)
    assert not stray.passed and "not in the resampled m15" in stray.description


def test_derived_consistency_judges_each_partition_on_its_own(calendar):
    other = ("AAPL", DAY)
    m15 = pd.concat([regular_m15(calendar), regular_m15(calendar, "AAPL")], ignore_index=True)
    h4 = resample_bars(m15, Timeframe.H4, calendar)
    h4.loc[h4.symbol == "AAPL", "close"] *= 1.01
    verdicts = {v.partition: v.passed for v in quality.derived_consistency(m15, h4, Timeframe.H4, [P, other], calendar)}
    assert verdicts == {P: True, other: False}


def test_derived_consistency_over_a_box_counts_and_names_each_partition(calendar):
    # A box run checks many partitions at once: each is judged, counted and described on its own.
    days = [date(2024, 11, 19), date(2024, 11, 20), DAY]
    symbols = ["AAPL", "MSFT", "NVDA"]
    m15 = pd.concat([regular_m15(calendar, s, d) for s in symbols for d in days], ignore_index=True)
    h1 = resample_bars(m15, Timeframe.H1, calendar)
    changed = (h1.symbol == "MSFT") & (h1.ts.dt.date == days[1])
    h1.loc[h1.index[changed][[2, 4]], "close"] += 0.5  # two bars of one partition
    dropped = h1.index[(h1.symbol == "NVDA") & (h1.ts.dt.date == DAY)][-1]
    first_changed_ts = h1.loc[h1.index[changed][2], "ts"]
    h1 = h1.drop(index=dropped)
    partitions = [(s, d) for s in symbols for d in days]
    verdicts = {v.partition: v for v in quality.derived_consistency(m15, h1, Timeframe.H1, partitions, calendar)}

    assert list(verdicts) == sorted(partitions)
    bad = {p for p, v in verdicts.items() if not v.passed}
    assert bad == {("MSFT", days[1]), ("NVDA", DAY)}
    assert verdicts[("MSFT", days[1])].description == (
        f"2 h1 bar(s) disagree with m15; first at {first_changed_ts.isoformat()}: differs from the resampled m15"
    )
    assert "1 h1 bar(s) disagree" in verdicts[("NVDA", DAY)].description
    assert "missing from the store" in verdicts[("NVDA", DAY)].description
    assert verdicts[("NVDA", DAY)].metadata == {"resampled_bars": 7, "stored_bars": 6}
    assert verdicts[("AAPL", DAY)].metadata == {"resampled_bars": 7, "stored_bars": 7}
    # A partition with no bars at all is judged too (nothing to disagree with).
    (none,) = quality.derived_consistency(m15, h1, Timeframe.H1, [("TSLA", DAY)], calendar)
    assert none.passed and none.metadata == {"resampled_bars": 0, "stored_bars": 0}


def test_daily_agreement_over_a_box(calendar):
    days = [date(2024, 11, 20), DAY]
    m15 = pd.concat([regular_m15(calendar, s, d) for s in ("AAPL", "MSFT") for d in days], ignore_index=True)
    d1 = pd.concat(
        [aggregate_day(m15[(m15.symbol == s) & (m15.ts.dt.date == d)], s, calendar.midnight(d))
         for s in ("AAPL", "MSFT") for d in days],
        ignore_index=True,
    )
    low = (d1.symbol == "MSFT") & (d1.ts == calendar.midnight(days[0]))
    d1.loc[low, "high"] -= 5
    verdicts = {v.partition: v for v in quality.daily_agreement(m15, d1, [("AAPL", d) for d in days]
                                                                + [("MSFT", d) for d in days], calendar)}
    assert {p for p, v in verdicts.items() if not v.passed} == {("MSFT", days[0])}
    assert "d1 high" in verdicts[("MSFT", days[0])].description
    ok = verdicts[("AAPL", DAY)].metadata
    assert ok["m15_bars"] == 26 and ok["d1_high"] == ok["m15_high"] and ok["d1_volume"] == ok["m15_volume"]


def test_daily_agreement(calendar):
    m15 = regular_m15(calendar)
    d1 = aggregate_day(m15, "MSFT", calendar.midnight(DAY))
    (ok,) = quality.daily_agreement(m15, d1, [P], calendar)
    assert ok.passed, ok.description

    low_high = d1.assign(high=m15.high.max() - 0.5)
    (bad,) = quality.daily_agreement(m15, low_high, [P], calendar)
    assert not bad.passed and "d1 high" in bad.description and bad.severity is quality.Severity.WARN

    thin = d1.assign(volume=m15.volume.sum() / 2, low=m15.low.min() + 0.5)
    (bad,) = quality.daily_agreement(m15, thin, [P], calendar)
    assert "d1 volume" in bad.description and "d1 low" in bad.description

    (no_d1,) = quality.daily_agreement(m15, d1.iloc[0:0], [P], calendar)
    assert not no_d1.passed and "no d1 bar" in no_d1.description
    (nothing,) = quality.daily_agreement(m15.iloc[0:0], d1.iloc[0:0], [P], calendar)
    assert nothing.passed


def test_daily_agreement_ignores_extended_hours_m15(calendar):
    bars = synthetic_session_m15("MSFT", DAY, calendar)  # 04:00-20:00 New York
    regular = regular_m15(calendar)
    d1 = aggregate_day(regular, "MSFT", calendar.midnight(DAY))
    spike = bars.copy()
    pre = spike.ts < calendar.window(DAY)[0]
    spike.loc[pre, "high"] = spike.loc[pre, "high"] * 3  # a pre-market print above the day's high
    (verdict,) = quality.daily_agreement(spike, d1, [P], calendar)
    assert verdict.passed, verdict.description


def _verdict(symbol, day, passed, completeness=None, severity=quality.Severity.WARN):
    meta = {} if completeness is None else {"completeness": completeness}
    return quality.Verdict((symbol, date.fromisoformat(day)), passed, severity, f"{symbol} {day}", meta)


def test_a_summary_passes_only_if_every_partition_passed_and_names_the_worst_first():
    verdicts = [
        _verdict("MSFT", "2024-11-21", True, 1.0),
        _verdict("AAPL", "2024-11-22", False, 0.5),
        _verdict("AAPL", "2024-11-21", False),  # a failed fetch: no completeness, the worst
        _verdict("NVDA", "2024-11-21", False, 0.5),
    ]
    summary = quality.summarize(verdicts, quality.Severity.WARN)
    assert not summary.passed and (summary.checked, summary.failed) == (4, 3)
    assert [quality.partition_name(v.partition) for v in summary.worst] == [
        "2024-11-21|AAPL", "2024-11-21|NVDA", "2024-11-22|AAPL",
    ]
    assert summary.description == "3 of 4 partition(s) failed; worst: 2024-11-21|AAPL: AAPL 2024-11-21"
    assert summary.severity is quality.Severity.WARN


def test_a_summary_names_at_most_the_limit_and_takes_the_gravest_severity():
    verdicts = [_verdict("MSFT", d.isoformat(), False, severity=quality.Severity.ERROR)
                for d in pd.bdate_range("2024-01-01", periods=30).date]
    summary = quality.summarize(verdicts, quality.Severity.WARN)
    assert summary.failed == 30 and len(summary.worst) == quality.WORST_NAMED == 20
    assert summary.severity is quality.Severity.ERROR
    passing = quality.summarize([_verdict("MSFT", "2024-11-21", True)], quality.Severity.ERROR)
    assert passing.passed and passing.description == "all 1 partition(s) passed" and passing.worst == ()
    assert quality.summarize([], quality.Severity.WARN).description == "no partitions to check"

"""The pure data-quality rules behind the asset checks, including every way they fail."""

from datetime import date

import pandas as pd
import pytest

from backfill_dagster import quality
from backfill_dagster.providers.demo import synthetic_session_m15
from backfill_dagster.resample import resample_bars
from backfill_dagster.timeframes import Timeframe
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

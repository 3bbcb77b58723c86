"""Resampling m15 -> h1/h4: golden sessions (tests/domain/golden/resample), properties, errors."""

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill_dagster.domain.bars import validate_bars
from backfill_dagster.domain.resample import ResampleError, resample_bars
from backfill_dagster.domain.timeframes import Timeframe

GOLDEN = Path(__file__).parent / "golden" / "resample"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "case.json").exists())


def read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"symbol": str}).drop(columns=["new_york"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def compare(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    actual = actual.reset_index(drop=True)
    assert list(actual["ts"]) == list(expected["ts"])
    assert list(actual["symbol"]) == list(expected["symbol"])
    for column in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(actual[column].to_numpy(float), expected[column].to_numpy(float)), column
    np.testing.assert_allclose(actual["vwap"].to_numpy(float), expected["vwap"].to_numpy(float), rtol=0, atol=1e-8)
    assert list(actual["trade_count"].astype(int)) == list(expected["trade_count"].astype(int))


def test_there_are_golden_cases():
    assert set(CASES) >= {"normal_session", "early_close", "after_spring_dst", "after_autumn_dst",
                          "illiquid_with_holes", "extended_hours"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("timeframe", [Timeframe.H1, Timeframe.H4])
def test_golden_sessions(calendar, case, timeframe):
    meta = json.loads((GOLDEN / case / "case.json").read_text())
    m15 = read(GOLDEN / case / "m15.csv")
    # The input passes validation as it would in the pipeline.
    checked = validate_bars(m15, Timeframe.M15, calendar, extended=meta["extended"])
    assert checked.rejected.empty and len(checked.valid) == len(m15)
    compare(resample_bars(checked.valid, timeframe, calendar, extended=meta["extended"]),
            read(GOLDEN / case / f"{timeframe.value}.csv"))


@pytest.mark.parametrize("timeframe", [Timeframe.H1, Timeframe.H4])
def test_extended_hours_off_keeps_only_regular_hours(calendar, timeframe):
    m15 = read(GOLDEN / "extended_hours" / "m15.csv")
    checked = validate_bars(m15, Timeframe.M15, calendar, extended=False)
    assert checked.outside_hours == 6
    compare(resample_bars(checked.valid, timeframe, calendar), read(GOLDEN / "extended_hours" / f"{timeframe.value}_regular_only.csv"))


def test_regular_hours_bars_do_not_change_when_extended_hours_are_on(calendar):
    m15 = read(GOLDEN / "normal_session" / "m15.csv")
    for timeframe in (Timeframe.H1, Timeframe.H4):
        compare(resample_bars(m15, timeframe, calendar, extended=True), read(GOLDEN / "normal_session" / f"{timeframe.value}.csv"))


def test_many_symbols_and_sessions_at_once_equal_one_by_one(calendar):
    frames = [read(GOLDEN / case / "m15.csv") for case in ("normal_session", "early_close", "after_autumn_dst", "illiquid_with_holes")]
    together = resample_bars(pd.concat(frames[::-1], ignore_index=True), Timeframe.H1, calendar)
    apart = pd.concat([resample_bars(f, Timeframe.H1, calendar) for f in frames], ignore_index=True)
    apart = apart.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(together, apart)


def test_resample_refuses_bad_input(calendar):
    m15 = read(GOLDEN / "normal_session" / "m15.csv")
    with pytest.raises(ResampleError, match="only h1 and h4"):
        resample_bars(m15, Timeframe.D1, calendar)
    with pytest.raises(ResampleError, match="duplicate m15 bars"):
        resample_bars(pd.concat([m15, m15.iloc[:1]]), Timeframe.H1, calendar)
    outside = m15.copy()
    outside.loc[0, "ts"] = pd.Timestamp("2024-10-15 12:00", tz="UTC")
    with pytest.raises(ResampleError, match="outside the session hours"):
        resample_bars(outside, Timeframe.H1, calendar)
    assert resample_bars(m15.iloc[:0], Timeframe.H1, calendar).empty


SESSIONS = [date(2024, 3, 8), date(2024, 3, 11), date(2024, 7, 3), date(2024, 11, 1), date(2024, 11, 4), date(2024, 11, 29)]


@st.composite
def m15_sets(draw):
    from backfill_dagster.domain.calendar import xnys

    calendar = xnys()
    extended = draw(st.booleans())
    grid = calendar.expected_bars(SESSIONS, Timeframe.M15, extended=extended)
    rows = []
    for symbol in draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=3, unique=True)):
        keep = draw(st.lists(st.booleans(), min_size=len(grid), max_size=len(grid)))
        for (session, ts), kept in zip(grid.itertuples(index=False), keep):
            if not kept:
                continue
            o = draw(st.floats(1, 1000, allow_nan=False))
            c = draw(st.floats(1, 1000, allow_nan=False))
            rows.append({"symbol": symbol, "ts": ts, "open": o, "close": c, "high": max(o, c) + draw(st.floats(0, 5)),
                         "low": min(o, c) * draw(st.floats(0.5, 1)), "volume": float(draw(st.integers(0, 10**7)))})
    return extended, pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume"])


@settings(max_examples=60, deadline=None)
@given(m15_sets(), st.sampled_from([Timeframe.H1, Timeframe.H4]))
def test_property_volumes_add_up_and_extremes_bound(case, timeframe):
    from backfill_dagster.domain.calendar import xnys

    calendar = xnys()
    extended, m15 = case
    coarse = resample_bars(m15, timeframe, calendar, extended=extended)
    if m15.empty:
        assert coarse.empty
        return
    where = calendar.locate(m15["ts"], timeframe, extended=extended)
    m15 = m15.assign(bucket=where["bucket"].to_numpy())
    groups = m15.groupby(["symbol", "bucket"])
    assert len(coarse) == groups.ngroups  # one bar per non-empty bucket, none for empty ones
    keyed = coarse.set_index(["symbol", "ts"])
    assert np.allclose(keyed["volume"].to_numpy(), groups["volume"].sum().to_numpy(), rtol=1e-12)
    assert (keyed["high"].to_numpy() == groups["high"].max().to_numpy()).all()
    assert (keyed["low"].to_numpy() == groups["low"].min().to_numpy()).all()
    assert (keyed["high"] >= keyed[["open", "close", "low"]].max(axis=1)).all()
    assert (keyed["low"] <= keyed[["open", "close"]].min(axis=1)).all()
    # Every coarse bar lies on the expected session grid.
    sessions = sorted(set(where["session"]))
    grid = set(calendar.expected_bars(sessions, timeframe, extended=extended)["ts"])
    assert set(coarse["ts"]) <= grid
    assert validate_bars(coarse, timeframe, calendar, extended=extended).rejected.empty

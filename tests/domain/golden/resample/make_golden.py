"""How the resampling golden files were made (run once; the CSVs are the committed answers).

Inputs are small m15 sessions with arithmetic values so a reader can check any expected bar by
hand: the bar at position i of the regular session has open 100+i, high 101.5+i, low 99+i,
close 100.5+i, volume 100*(i+1), vwap 100.25+i, trade_count 10+i. Expected h1/h4 bars come from
this file's own reference, written independently of backfill_dagster (plain wall-clock rules in
America/New_York, one bucket at a time) — not from the code under test.

    python tests/domain/golden/resample/make_golden.py
"""

import csv
import json
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")
HERE = Path(__file__).parent


def bar(symbol, day, hh, mm, i, **override):
    start = datetime.combine(day, time(hh, mm), NY)
    row = {"symbol": symbol, "ts": start.astimezone(UTC), "open": 100 + i, "high": 101.5 + i, "low": 99 + i,
           "close": 100.5 + i, "volume": 100 * (i + 1), "vwap": 100.25 + i, "trade_count": 10 + i}
    if i < 0:  # pre-market positions count back from the open; keep their volume positive
        row["volume"] = 50 - i
        row["trade_count"] = 10 - i
    row.update(override)
    return row


def regular(symbol, day, close_hour=16, keep=None):
    rows, i, t = [], 0, datetime.combine(day, time(9, 30))
    while t.time() < time(close_hour, 0):
        if keep is None or i in keep:
            rows.append(bar(symbol, day, t.hour, t.minute, i))
        i += 1
        t += timedelta(minutes=15)
    return rows


def segments(day, close, extended):
    """(start, end) wall-clock segments of a session: regular hours, plus pre and post."""
    d = lambda h, m=0: datetime.combine(day, time(h, m), NY)
    regular = [(d(9, 30), d(close))]
    if not extended:
        return regular
    return [(d(4), d(9, 30)), *regular, (d(close), d(close) + timedelta(hours=4))]


def reference(rows, minutes, day, close, extended):
    """Session-anchored buckets, one at a time: each segment cut from its own start."""
    out = []
    for seg_start, seg_end in segments(day, close, extended):
        start = seg_start
        while start < seg_end:
            end = min(start + timedelta(minutes=minutes), seg_end)
            members = [r for r in rows if start <= r["ts"].astimezone(NY) < end]
            if members:
                volume = sum(r["volume"] for r in members)
                vwaps = [r["vwap"] for r in members]
                vwap = "" if any(v == "" for v in vwaps) else round(sum(r["vwap"] * r["volume"] for r in members) / volume, 10)
                out.append({"symbol": members[0]["symbol"], "ts": start.astimezone(UTC), "open": members[0]["open"],
                            "high": max(r["high"] for r in members), "low": min(r["low"] for r in members),
                            "close": members[-1]["close"], "volume": volume, "vwap": vwap,
                            "trade_count": sum(r["trade_count"] for r in members)})
            start = end
    return out


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["symbol", "ts", "new_york", "open", "high", "low", "close", "volume", "vwap", "trade_count"])
        for r in rows:
            w.writerow([r["symbol"], r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"), r["ts"].astimezone(NY).strftime("%H:%M"),
                        r["open"], r["high"], r["low"], r["close"], r["volume"], r["vwap"], r["trade_count"]])


CASES = {
    # (day, close hour, extended, m15 rows)
    "normal_session": (date(2024, 10, 15), 16, False, regular("AAPL", date(2024, 10, 15))),
    "early_close": (date(2024, 11, 29), 13, False, regular("AAPL", date(2024, 11, 29), close_hour=13)),
    "after_spring_dst": (date(2024, 3, 11), 16, False, regular("AAPL", date(2024, 3, 11))),
    "after_autumn_dst": (date(2024, 11, 4), 16, False, regular("AAPL", date(2024, 11, 4))),
    # Holes: no trades at all in 10:30-11:30 but one bar (position 6); the 12:30-15:30 buckets are
    # empty (no bar); one bar without a vwap makes its hour's vwap unknown.
    "illiquid_with_holes": (date(2024, 6, 12), 16, False, [
        bar("ILLQ", date(2024, 6, 12), 9, 30, 0), bar("ILLQ", date(2024, 6, 12), 9, 45, 1),
        bar("ILLQ", date(2024, 6, 12), 11, 0, 6), bar("ILLQ", date(2024, 6, 12), 11, 45, 9, vwap=""),
        bar("ILLQ", date(2024, 6, 12), 12, 0, 10), bar("ILLQ", date(2024, 6, 12), 15, 45, 25)]),
    "extended_hours": (date(2024, 12, 2), 16, True, [
        bar("AAPL", date(2024, 12, 2), 4, 0, -22), bar("AAPL", date(2024, 12, 2), 4, 15, -21),
        bar("AAPL", date(2024, 12, 2), 8, 45, -3), bar("AAPL", date(2024, 12, 2), 9, 15, -1),
        *regular("AAPL", date(2024, 12, 2)),
        bar("AAPL", date(2024, 12, 2), 16, 0, 26), bar("AAPL", date(2024, 12, 2), 19, 45, 41)]),
}

if __name__ == "__main__":
    for name, (day, close, extended, rows) in CASES.items():
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        (folder / "case.json").write_text(json.dumps({"session": day.isoformat(), "extended": extended}) + "\n")
        write(folder / "m15.csv", rows)
        write(folder / "h1.csv", reference(rows, 60, day, close, extended))
        write(folder / "h4.csv", reference(rows, 240, day, close, extended))
        if extended:  # the same input with extended hours off: only regular hours survive
            regular_rows = [r for r in rows if segments(day, close, False)[0][0] <= r["ts"].astimezone(NY) < segments(day, close, False)[0][1]]
            write(folder / "h1_regular_only.csv", reference(regular_rows, 60, day, close, False))
            write(folder / "h4_regular_only.csv", reference(regular_rows, 240, day, close, False))

"""Reading one whole-market minute file for a few hundred tickers: the block reader vs the line reader.

    python bench/flatfiles_parse.py [--symbols 500] [--fillers 9500] [--repeats 1] [--file PATH]

Makes one minute file with the flat-files fake (the requested symbols, pitfall tickers among them,
plus `--fillers` tickers nobody asked for: 10,000 tickers is a whole market's count, though every
fake ticker trades every quarter hour, so the file is ~4x a real one's ~30 MB; `--fillers 1700`
makes one of a real file's size), then reads it for the requested symbols, each reading in a child
process of its own so that its peak memory is its own:

- gunzip only: the decompression the two readers share (the floor);
- line reader (baseline): `read_aggs` over the text lines of the gzip stream, as the provider read
  files before (a Python step per line);
- block reader: `read_aggs_blocks` over blocks of the gzip stream, as the provider reads them now.

Prints per reading the median wall and CPU seconds, the peak RSS over the RSS before reading, the
ratio to the baseline; asserts that both readers return identical FileRows (every row, code, value
and rejection, in order). The machine may be shared: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SESSION = date(2025, 12, 30)
MODES = ("gunzip", "lines", "blocks")
LABELS = {"gunzip": "gunzip only (the floor)", "lines": "line reader (baseline)", "blocks": "block reader"}


def requested(symbols: int) -> list[str]:
    """`symbols` requested tickers: the fake's pitfall tickers (NA, TpC, BRK.B...) and S000, S001..."""
    from backfill_dagster.fakes.flatfile_data import PITFALL_TICKERS

    return [*PITFALL_TICKERS, *(f"S{i:03d}" for i in range(symbols - len(PITFALL_TICKERS)))]


def make_file(path: Path, symbols: int, fillers: int) -> float:
    """The session's minute file of the requested tickers and the fillers, as the fake makes it."""
    from backfill_dagster.fakes import flatfile_data
    from backfill_dagster.fakes.data import BarData

    start = time.perf_counter()
    tickers = flatfile_data.universe(requested(symbols), fillers)
    flatfile_data.write_gz(flatfile_data.minute_csv_chunks(BarData(), tickers, SESSION), path)
    return time.perf_counter() - start


def peak_rss_kb() -> int:
    """This process's peak resident memory so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str, path: Path, symbols: int, out: Path) -> None:
    """One reading of the file; prints its figures as JSON and leaves its FileRows in `out`."""
    import gzip

    from backfill_dagster.domain.minute_aggs import BLOCK_BYTES, read_aggs, read_aggs_blocks
    from backfill_dagster.providers.flatfiles import _blocks, _lines

    tickers = set(requested(symbols))
    before = peak_rss_kb()
    wall, cpu = time.perf_counter(), time.process_time()
    rows = None
    with path.open("rb") as f:
        if mode == "gunzip":
            with gzip.GzipFile(fileobj=f) as gz:
                while gz.read(BLOCK_BYTES):
                    pass
        elif mode == "lines":
            rows = read_aggs(_lines(f), tickers)
        else:
            rows = read_aggs_blocks(_blocks(f), tickers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {"wall": wall, "cpu": cpu, "rss_mb": (peak_rss_kb() - before) / 1024, "rows": len(rows or ())}
    if rows is not None:
        out.write_bytes(pickle.dumps((rows.names, rows.codes.tobytes(), rows.window_start.tobytes(),
                                      rows.flat_values.tobytes(), rows.rejected)))
    print(json.dumps(figures))


def run_child(mode: str, path: Path, symbols: int, out: Path) -> dict:
    here = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--file", str(path), "--symbols", str(symbols),
                           "--out", str(out)], check=True, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": here})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500, help="requested tickers (6 pitfall ones among them)")
    parser.add_argument("--fillers", type=int, default=9500, help="tickers in the file nobody asked for")
    parser.add_argument("--repeats", type=int, default=1, help="readings of each kind (medians printed)")
    parser.add_argument("--file", type=Path, help="read this minute file (made there first if missing)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.symbols, args.out)
        return

    with tempfile.TemporaryDirectory(prefix="ffparse_") as tmp:
        path = args.file or Path(tmp) / f"{SESSION}.csv.gz"
        if not path.exists():
            seconds = make_file(path, args.symbols, args.fillers)
            print(f"made {path.name}: {args.symbols} requested + {args.fillers} filler tickers in {seconds:.0f} s")
        figures: dict[str, list[dict]] = {m: [] for m in MODES}
        results = {}
        for _ in range(args.repeats):
            for mode in MODES:
                out = Path(tmp) / f"{mode}.pickle"
                figures[mode].append(run_child(mode, path, args.symbols, out))
                if mode != "gunzip":
                    results[mode] = out.read_bytes()
        assert pickle.loads(results["blocks"]) == pickle.loads(results["lines"]), "the readers' FileRows differ"
        size = path.stat().st_size

    rows = figures["lines"][0]["rows"]
    print(f"file {size / 1e6:.1f} MB gzip, {args.symbols} tickers requested: {rows:,} rows kept; "
          f"identical FileRows from both readers; medians of {args.repeats}")
    def median(mode, what):
        return statistics.median(f[what] for f in figures[mode])

    base, base_cpu = median("lines", "wall"), median("lines", "cpu")
    print(f"{'reading':26} {'wall s':>8} {'cpu s':>8} {'peak RSS +MB':>13} {'wall / baseline':>16} {'cpu / baseline':>15}")
    for mode in MODES:
        wall, cpu, rss = median(mode, "wall"), median(mode, "cpu"), median(mode, "rss_mb")
        print(f"{LABELS[mode]:26} {wall:8.2f} {cpu:8.2f} {rss:13.0f} {wall / base:16.2f} {cpu / base_cpu:15.2f}")
    floor = median("gunzip", "cpu")
    print(f"block reader: {base / median('blocks', 'wall'):.1f}x faster than the line reader (wall), "
          f"{base_cpu / median('blocks', 'cpu'):.1f}x (cpu); beyond gunzip's cpu "
          f"{(base_cpu - floor) / max(median('blocks', 'cpu') - floor, 1e-9):.1f}x")


if __name__ == "__main__":
    main()

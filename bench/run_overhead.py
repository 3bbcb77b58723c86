"""A run worker's fixed start: what a new process pays before its first step, and the project's share.

    python bench/run_overhead.py [--repeat 5]

Each figure is a fresh Python process (as every run worker and code server is), alternating the
variants so that all see the same load, best of `--repeat`:

- `dagster`: `import dagster, dagster_postgres` — what any worker of a PostgreSQL instance imports,
  the floor the project cannot lower;
- `project, calendar cached`: the code location as a worker loads it — `backfill_dagster.definitions`
  imported, the XNYS calendar made, `defs()` built — with the calendar's stored schedule present;
- `project, calendar built`: the same with an empty cache directory, so the process builds the
  calendar with exchange_calendars (what every process paid before the schedule was stored).

Prints each variant's wall and peak RSS and the project's share over the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOOR = "import dagster, dagster_postgres"
PROJECT = """
import backfill_dagster.definitions
from backfill_dagster import defs
from backfill_dagster.domain.calendar import xnys
xnys()
defs()
"""
PROBE = """
import json, resource, sys, time
t = time.perf_counter()
exec(sys.argv[1])
print(json.dumps({"s": time.perf_counter() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "xcals": "exchange_calendars" in sys.modules}))
"""


def measure(code: str, cache_dir: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE, code], capture_output=True, text=True,
                         cwd=ROOT, env={**env, "XDG_CACHE_HOME": cache_dir}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BACKFILL_DATA_DIR": tempfile.mkdtemp(prefix="bench_overhead_")}
    results: dict[str, list[dict]] = {"dagster": [], "project, calendar cached": [], "project, calendar built": []}
    with tempfile.TemporaryDirectory() as cached:
        measure(PROJECT, cached, env)  # stores the schedule
        for _ in range(args.repeat):
            results["dagster"].append(measure(FLOOR, cached, env))
            results["project, calendar cached"].append(measure(PROJECT, cached, env))
            with tempfile.TemporaryDirectory() as empty:
                results["project, calendar built"].append(measure(PROJECT, empty, env))
    best = {name: min(runs, key=lambda r: r["s"]) for name, runs in results.items()}
    floor = best["dagster"]["s"]
    print(f"a new process, best of {args.repeat} (alternating):")
    for name, r in best.items():
        over = "" if name == "dagster" else f"; over the floor {r['s'] - floor:.2f} s ({(r['s'] - floor) / r['s']:.0%} of it)"
        print(f"  {name:<26} {r['s']:6.2f} s  peak RSS {r['rss_mb']:5.0f} MB  exchange_calendars imported: "
              f"{r['xcals']}{over}")
    built, cached = best["project, calendar built"]["s"], best["project, calendar cached"]["s"]
    print(f"  the stored calendar saves {built - cached:.2f} s a process ({cached / built:.2f}x)")


if __name__ == "__main__":
    main()

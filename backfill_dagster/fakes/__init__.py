"""Loopback HTTP fakes of the four bar providers (Alpaca, Polygon, Tradier, Yahoo).

They reproduce each API's documented behaviour: response shapes, paging,
auth errors, history limits, rate limits with their headers, and injected faults, serving the
deterministic synthetic bars of the demo provider. Tests, the benchmark and local runs point the
real clients at them through `FakeProviders.env()`.

    with FakeProviders(FakeConfig(rate_limits={"alpaca": 200})) as fakes:
        settings = fakes.env()          # ALPACA_DATA_URL=http://127.0.0.1:PORT, keys...
        ...
        assert fakes.max_in_window("alpaca", 60.0) <= 200

`python -m backfill_dagster.fakes --port 8900` serves them until interrupted.

`FakeFlatFiles` (fakes/flatfiles.py) serves the same market as Polygon/Massive flat files on a
loopback S3 endpoint; `python -m backfill_dagster.fakes flatfiles` starts it.
"""

from backfill_dagster.fakes.config import FAULT_KINDS, PROVIDERS, FakeConfig
from backfill_dagster.fakes.control import Logged
from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig
from backfill_dagster.fakes.server import FakeProviders

__all__ = ["FAULT_KINDS", "PROVIDERS", "FakeConfig", "FakeFlatFiles", "FakeProviders", "FlatFilesConfig", "Logged"]

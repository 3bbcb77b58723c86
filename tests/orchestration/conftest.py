import dagster as dg
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
from backfill_dagster.settings import Settings
from backfill_dagster.store import Watchlist, shared_engine


@pytest.fixture
def settings(tmp_path, store_url):
    return Settings(data_dir=tmp_path, database_url=store_url, history_start=Settings().history_start)


@pytest.fixture
def defs(settings):
    return build_definitions(settings)


def add_symbols(instance: dg.DagsterInstance, url: str, symbols):
    Watchlist(shared_engine(url)).add(symbols)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(symbols))

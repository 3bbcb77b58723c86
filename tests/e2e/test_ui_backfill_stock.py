"""The UI backfill on the fallback profile, deploy/dagster-stock.yaml: the same instance on
dagster-postgres's stock storages, Dagster's DefaultRunLauncher and LocalComputeLogManager (README,
"Deploy"). The tests of test_ui_backfill.py that a deployment on it must pass, against a deployment
of its own: the UI's backfill (every partition materialized once, complete in the ledger, checked;
Dagster's one run per symbol, since the box runs come with the project's event log) and the
webserver on loopback only. The CLI's runs read no instance plug-in that differs between profiles
and are tested on the production profile only."""

import pytest

from tests.deploy import ROOT
from tests.e2e.test_ui_backfill import (  # noqa: F401  (collected here, against this module's deployment)
    running,
    test_a_ui_backfill_of_all_four_assets_fills_the_box,
    test_the_webserver_listens_on_loopback_only,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def instance_yaml():
    return ROOT / "deploy" / "dagster-stock.yaml"


@pytest.fixture(scope="module")
def profile() -> str:
    return "stock"

"""The UI's way in, with real processes: a backfill launched over HTTP exactly as the UI launches
it (GraphQL `launchPartitionBackfill`), run by dagster-daemon, bars landing in PostgreSQL; the
asset page in a real headless Chromium; and `dagster asset materialize` against the same instance.

On the production dagster.yaml; test_ui_backfill_stock.py runs the UI backfill, the CLI runs and
the loopback check again on the fallback profile, Dagster's stock parts (deploy/dagster-stock.yaml,
README "Deploy"). The same partitions end materialized, complete in the ledger, checked and fetched
once on both; only the runs differ (one box run against Dagster's one run per symbol)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.store import shared_engine
from tests.deploy import BACKFILL_STATUS, BIN, LAUNCH_BACKFILL, ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
SYMBOLS = ["AAPL", "MSFT"]
ARTIFACTS = Path(os.environ.get("BACKFILL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECKS = {("bars_m15", "m15_completeness"), ("bars_h1", "matches_m15_resampled"),
          ("bars_h4", "matches_m15_resampled"), ("bars_d1", "bounds_m15")}


@pytest.fixture(scope="module")
def profile() -> str:
    """The instance profile this module deploys (tests/e2e/conftest.py `instance_yaml`)."""
    return "production"


@pytest.fixture(scope="module")
def running(deployment):
    out = deployment.run(BIN / "backfill-dagster", "watchlist", "add", *SYMBOLS)
    assert out.returncode == 0, out.stderr
    deployment.start_webserver()
    deployment.start_daemon()
    return deployment


def instance_of(deployment) -> dg.DagsterInstance:
    os.environ.update({k: v for k, v in deployment.env.items() if k.startswith("DAGSTER_PG_")})
    return dg.DagsterInstance.from_config(str(deployment.home))


def test_a_ui_backfill_of_all_four_assets_fills_the_box(running, profile):
    sessions = xnys().sessions("2024-11-18", "2024-11-22")
    keys = [f"{d.isoformat()}|{s}" for s in SYMBOLS for d in sessions]
    data = running.graphql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": [a]} for a in ASSETS],
        "partitionNames": keys,
        "fromFailure": False,
        "tags": [],
        "title": "e2e box",
    }})
    launched = data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        status = running.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return status if status["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED") else None

    status = running.wait_for(finished, timeout=420, what=f"backfill {backfill_id}", interval=1)
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    counts = {tuple(s["assetKey"]["path"]): s for s in status["assetBackfillData"]["assetBackfillStatuses"]}
    for asset in ASSETS:
        assert counts[(asset,)]["numPartitionsMaterialized"] == len(keys), counts[(asset,)]
        assert counts[(asset,)]["numPartitionsFailed"] == 0

    with instance_of(running) as instance:
        for asset in ASSETS:
            assert set(keys) <= instance.get_materialized_partitions(dg.AssetKey(asset)), asset
            # each partition materialized once: nothing fetched or derived twice
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=keys), limit=1000).records
            assert sorted(r.partition_key for r in records) == sorted(keys), asset
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        if profile == "production":
            assert len(runs) == 1  # one box: both symbols x five sessions, four assets (instance/backfill_runs.py)
        else:
            # Dagster's own run formation: one run per symbol, its five sessions, four assets
            assert sorted(r.tags["dagster/asset_partition_range_start"].split("|")[1] for r in runs) == SYMBOLS
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # the checks summarise each run; between them, every partition checked and passed
        checked = {check: 0 for check in CHECKS}
        for run in runs:
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
                evaluation = entry.dagster_event.event_specific_data
                check = (evaluation.asset_key.path[-1], evaluation.check_name)
                if check in CHECKS:
                    assert evaluation.passed, (check, evaluation.description)
                    checked[check] += evaluation.metadata["partitions_checked"].value
        assert checked == {check: len(keys) for check in CHECKS}
    with shared_engine(running.store_url).connect() as conn:
        ledger = conn.execute(sa.text(
            "SELECT symbol, session, timeframe, status, attempts FROM bar_coverage WHERE symbol IN ('AAPL', 'MSFT') "
            "AND session BETWEEN '2024-11-18' AND '2024-11-22'"
        )).all()
    assert sorted((s, d.isoformat(), t) for s, d, t, _, _ in ledger) == sorted(
        (s, d.isoformat(), t) for s in SYMBOLS for d in sessions for t in ("m15", "h1", "h4", "d1"))
    assert {(status, attempts) for *_, status, attempts in ledger} == {("complete", 1)}
    with shared_engine(running.store_url).connect() as conn:
        rows = dict(conn.execute(sa.text(
            "SELECT timeframe, count(*) FROM ohlc_bars WHERE symbol IN ('AAPL', 'MSFT') "
            "AND ts >= '2024-11-18' AND ts < '2024-11-23' GROUP BY timeframe"
        )).all())
    assert rows == {"m15": 2 * 5 * 26, "h1": 2 * 5 * 7, "h4": 2 * 5 * 2, "d1": 2 * 5}


def test_cli_materialize_one_partition_and_a_range_on_postgres(running):
    one = running.run(BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15",
                      "--partition", "2024-12-02|AAPL")
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    box = running.run(BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster",
                      "--select", ",".join(ASSETS), "--partition-range", "2024-12-03|AAPL...2024-12-05|MSFT")
    assert box.returncode == 0, box.stdout[-3000:] + box.stderr[-3000:]
    with instance_of(running) as instance:
        assert "2024-12-02|AAPL" in instance.get_materialized_partitions(dg.AssetKey("bars_m15"))
        wanted = {f"2024-12-0{d}|{s}" for d in (3, 4, 5) for s in SYMBOLS}
        for asset in ASSETS:
            assert wanted <= instance.get_materialized_partitions(dg.AssetKey(asset))
    with shared_engine(running.store_url).connect() as conn:
        count = conn.execute(sa.text(
            "SELECT count(*) FROM ohlc_bars WHERE timeframe = 'm15' AND ts >= '2024-12-03' AND ts < '2024-12-06'"
        )).scalar_one()
    assert count == 3 * 2 * 26


def dismiss_newsletter_prompt(page) -> None:
    """Dagster's UI shows a one-time 'Join the Dagster community' prompt over everything, whenever
    it is ready: Playwright skips it before any action it would block, however late it comes. The
    click is dispatched to the button itself: when the prompt comes while the launch dialog is open,
    a pointer click lands on the dialog's overlay and the prompt stays (seen once)."""
    skip = page.get_by_role("button", name="Skip")
    page.add_locator_handler(skip, lambda *_: skip.dispatch_event("click"))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_asset_page_in_a_real_browser(running):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "bars_m15_asset_page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            dismiss_newsletter_prompt(page)
            page.goto(f"{running.webserver_url}/assets/bars_m15?view=partitions", timeout=60_000)
            page.get_by_text("bars_m15").first.wait_for(timeout=60_000)
            page.get_by_text("Materialized", exact=False).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)

            # Launch a backfill by clicking, as a user does: Materialize… -> dates -> all symbols.
            with instance_of(running) as instance:
                before = {b.backfill_id for b in instance.get_backfills()}
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog")
            dates = dialog.get_by_placeholder("ex: 2024-01-02", exact=False)
            dates.fill("[2024-12-09...2024-12-13]")
            dates.press("Enter")
            dialog.get_by_role("button", name="All").nth(1).click()  # every symbol
            dialog.get_by_text("10 partitions").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "launch_backfill_dialog.png"))
            dialog.get_by_role("button", name="Launch backfill").click()
            dialog.wait_for(state="detached", timeout=30_000)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000

    def launched():
        with instance_of(running) as instance:
            new = [b for b in instance.get_backfills() if b.backfill_id not in before]
            return new[0] if new and new[0].status.value in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED") else None

    backfill = running.wait_for(launched, timeout=300, what="the backfill launched by clicking", interval=1)
    assert backfill.status.value in ("COMPLETED", "COMPLETED_SUCCESS")
    with instance_of(running) as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("bars_m15"))
    assert {f"2024-12-{d:02d}|{s}" for d in range(9, 14) for s in SYMBOLS} <= done


def test_ensure_coverage_waits_for_its_backfill_with_a_progress_bar(running):
    first_call = pd.Timestamp.now(tz="UTC")
    out = running.run(BIN / "backfill-dagster", "ensure-coverage", "NVDA", "--timeframe", "h1", "--sessions", "5",
                      "--wait", "--timeout", "400", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "added to the watchlist: NVDA" in out.stdout
    assert "launched backfill" in out.stdout and "bars_m15, bars_h1" in out.stdout  # h1 needs its m15 first
    assert "/10 partitions" in out.stdout  # 5 partitions x 2 assets, shown as it goes
    assert "5 of 5 partition(s) covered" in out.stdout
    with instance_of(running) as instance:
        backfills = [b for b in instance.get_backfills() if b.tags.get("backfill_dagster/launched_by") == "ensure-coverage"]
        assert len(backfills) == 1  # it is on the UI's backfills page

    again = running.run(BIN / "backfill-dagster", "ensure-coverage", "NVDA", "--timeframe", "h1", "--sessions", "5",
                        "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    if today_was_live(first_call, pd.Timestamp.now(tz="UTC")):
        # The session opened or closed (or its last bars became final) since the first call: that
        # session, and only it, is asked again.
        assert "1 of 1 partition(s) covered" in again.stdout or "nothing to do" in again.stdout, again.stdout
    else:
        assert "nothing to do" in again.stdout, again.stdout


def today_was_live(start: pd.Timestamp, end: pd.Timestamp) -> bool:
    """Whether the market's session of today ran, or its bars could still change, between two
    instants: from its open to half an hour past its close (the providers' delays)."""
    calendar = xnys()
    today = start.tz_convert("America/New_York").date()
    if not calendar.is_session(today):
        return False
    return start <= calendar.close(today) + pd.Timedelta(minutes=30) and end >= calendar.open(today)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _remote, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_the_webserver_listens_on_loopback_only(running):
    port = int(running.webserver_url.rsplit(":", 1)[1])
    addresses = listening_addresses(port)
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1, nothing on 0.0.0.0 or ::

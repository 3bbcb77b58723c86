"""A split listed only after history was stored before anyone asked about the symbol's corporate
actions, end to end with real processes: README "Using it" — `backfill-dagster watchlist add`, then
`dagster asset materialize` over a range with no daemon running — into PostgreSQL, the providers
being the fakes on loopback. The fakes then list a 4-for-1 split whose ex-date lies inside that
history, and dagster-daemon does the rest: watchlist_sync asks the providers (the first answers
about AAPL, so by the dates alone the split is history already applied), and split_repair must see
from the stored bars' jump at the ex-date that they are on the old basis, and repair them — not
mark the split not_needed over two share bases.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CorporateActions, Split
from backfill_dagster.store import BarStore, shared_engine
from tests.deploy import BIN

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CAL = xnys()
SESSIONS = CAL.recent_sessions(14, pd.Timestamp.now(tz="UTC"))[:10]  # closed, a few sessions back
EX = SESSIONS[6]
UNKNOWN_YET = date(2099, 1, 1)  # announced: no provider knows the split, so none re-based the history
REPAIR_TIMEOUT_S = 900  # the daemon's ticks, a corporate-actions run and the repair backfill's run


def split_row(url):
    with shared_engine(url).connect() as conn:
        return conn.execute(sa.text(
            "SELECT repair_state, repair_note, repair_backfill_id FROM corporate_actions "
            "WHERE symbol = 'AAPL' AND kind = 'split'")).first()


def d1(url):
    return BarStore(shared_engine(url), CAL).read_bars(Timeframe.D1, [("AAPL", d) for d in SESSIONS])


def test_history_stored_before_any_action_check_is_repaired_when_its_split_is_listed(deployment):
    registry = CorporateActions(splits=[Split("AAPL", EX, 4, 1, UNKNOWN_YET)], default_dividends=False)
    with FakeProviders(FakeConfig(corporate_actions=registry)) as fakes:
        deployment.env.update({**fakes.env(), "BACKFILL_PROVIDERS": "alpaca", "BACKFILL_HTTP_BACKOFF_SECONDS": "0.01",
                               # the chain watchlist_sync -> corporate actions -> split_repair waits on
                               # sensor ticks, not on work: each sensor looked at every 5 s (quick_daemon.py)
                               "BACKFILL_TEST_SENSOR_INTERVAL_S": "5"})
        url = deployment.store_url
        out = deployment.run(BIN / "backfill-dagster", "watchlist", "add", "AAPL")
        assert out.returncode == 0, out.stderr
        out = deployment.run(BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster",
                             "--select", "bars_m15,bars_h1,bars_h4,bars_d1",
                             "--partition-range", f"{SESSIONS[0]}|AAPL...{SESSIONS[-1]}|AAPL")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        old = d1(url)
        assert len(old) == len(SESSIONS)
        assert abs(old.close.iloc[5] / old.open.iloc[6] / 4 - 1) < 0.1  # two share bases, stored
        with shared_engine(url).connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM corporate_action_checks")).scalar_one() == 0

        # The provider lists the split now, and serves the history before it on the new basis.
        fakes.config.corporate_actions = CorporateActions(splits=[Split("AAPL", EX, 4, 1, EX)], default_dividends=False)
        # Only the sensors of the cycle under test: the gap sensor would fetch the last year too.
        out = deployment.run(BIN / "dagster", "sensor", "stop", "coverage_gaps", "-w", "workspace.yaml")
        assert out.returncode == 0, out.stdout + out.stderr
        deployment.start_daemon()
        deployment.wait_for(lambda: (row := split_row(url)) is not None and row.repair_state
                            in ("repaired", "not_needed", "failed"), REPAIR_TIMEOUT_S, "the split's repair to end")
        state, note, backfill_id = split_row(url)
        assert state == "repaired", note
        assert backfill_id and f"backfill {backfill_id} finished; no partition left on the old basis (" in note
        assert all(f"the stored {t.value} bars run on across the ex-date" in note for t in Timeframe), note

        # Every stored bar is the provider's split-adjusted history: one share basis.
        for timeframe in (Timeframe.M15, Timeframe.D1):
            stored = BarStore(shared_engine(url), CAL).read_bars(timeframe, [("AAPL", d) for d in SESSIONS])
            served = pd.concat([fakes.bars(timeframe, "AAPL", d, extended=False) for d in SESSIONS], ignore_index=True)
            pd.testing.assert_frame_equal(stored.drop(columns=["session", "provider", "adjustment"]).reset_index(drop=True),
                                          served, check_exact=True, obj=timeframe.value)
        new = d1(url)
        assert abs(new.close.iloc[5] / new.open.iloc[6] - 1) < 0.1
        ledger = BarStore(shared_engine(url)).coverage(symbols=["AAPL"])
        before = ledger[ledger.session < EX]
        assert len(before) == 4 * 6 and set(before.rewrite_reason) == {
            f"split 4:1 of AAPL ex {EX}: re-fetched on the new share basis"}
        assert set(ledger.status) == {"complete"}

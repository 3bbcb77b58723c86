"""The operator CLI and Dagster's own CLI against the project, as users run them."""

import os
import subprocess
import time
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.cli import main
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.store import shared_engine

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, store_url, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    values = {"DAGSTER_HOME": str(home), "BACKFILL_DATABASE_URL": store_url, "BACKFILL_DATA_DIR": str(tmp_path / "data")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def run(args, env, check=True):
    proc = subprocess.run([str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(url):
    with shared_engine(url).connect() as conn:
        return conn.execute(sa.text("SELECT * FROM ohlc_bars ORDER BY symbol, timeframe, ts")).all()


def test_watchlist_commands_edit_the_table_and_the_partitions(env, capsys):
    assert main(["watchlist", "add", "aapl", "MSFT"]) == 0
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("symbols") == ["AAPL", "MSFT"]
    assert main(["watchlist", "remove", "MSFT"]) == 0
    assert instance.get_dynamic_partitions("symbols") == ["AAPL"]
    assert main(["watchlist", "list"]) == 0
    out = capsys.readouterr().out
    assert "AAPL       active" in out and "MSFT       inactive" in out


def test_bad_input_is_a_clear_error_and_writes_nothing(env, capsys, store_url):
    assert main(["watchlist", "add", "GOOD", "BA|D"]) == 2
    assert "symbol 'BA|D' is not a valid ticker" in capsys.readouterr().err
    with shared_engine(store_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM watchlist").scalar() == 0
    assert main(["coverage", "--timeframe", "m5"]) == 2
    assert "unknown timeframe 'm5'" in capsys.readouterr().err


def test_watchlist_add_refuses_a_non_ascii_symbol_instead_of_storing_what_it_upper_cases_to(env, capsys, store_url):
    assert main(["watchlist", "add", "ß"]) == 2  # 'ß'.upper() is 'SS'
    assert "symbol 'ß' is not a valid ticker (it contains 'ß', not ASCII)" in capsys.readouterr().err
    assert watchlist_size(store_url) == 0
    assert dg.DagsterInstance.get().get_dynamic_partitions("symbols") == []


def test_unreachable_database_url_is_a_clear_error(env, monkeypatch, capsys):
    monkeypatch.setenv("BACKFILL_DATABASE_URL", "postgresql://u:topsecret@127.0.0.1:1/db")
    assert main(["watchlist", "list"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the database postgresql+psycopg://u:***@127.0.0.1:1/db" in err and "topsecret" not in err


def test_dagster_asset_materialize_one_partition_then_again_is_identical(env, store_url):
    assert main(["watchlist", "add", "AAPL", "MSFT"]) == 0
    command = [BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15", "--partition", "2024-11-29|AAPL"]
    proc = run(command, env)
    # nothing beside the run's own lines: no beta warning per asset, no "request" the demo never sends
    assert "BetaWarning" not in proc.stderr
    assert "demo: 1 partition(s) of m15 generated locally, no API call" in proc.stderr
    first = rows(store_url)
    assert len(first) == 14 and {r.symbol for r in first} == {"AAPL"}
    run(command, env)
    assert rows(store_url) == first


def test_dagster_asset_materialize_a_range(env, store_url, capsys):
    assert main(["watchlist", "add", "AAPL", "MSFT"]) == 0
    run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15,bars_h1,bars_h4,bars_d1",
         "--partition-range", "2024-11-25|AAPL...2024-11-29|MSFT"], env)
    with shared_engine(store_url).connect() as conn:
        counts = dict(conn.exec_driver_sql("SELECT timeframe, count(*) FROM bar_coverage WHERE status = 'complete' GROUP BY timeframe").all())
    assert counts == {"m15": 8, "h1": 8, "h4": 8, "d1": 8}
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("bars_h4"))) == 8
    # coverage: these sessions lie before the gap sensor's horizon, so they count as older ones
    capsys.readouterr()
    assert main(["coverage", "--timeframe", "m15"]) == 0
    out = capsys.readouterr().out
    for symbol in ("AAPL", "MSFT"):
        line = next(x for x in out.splitlines() if x.startswith(symbol))
        assert line.split()[:3] + line.split()[4:6] == [symbol, "active", "m15", "4", "4"], line


def test_a_range_ending_at_a_removed_symbol_names_that_key(env, store_url):
    assert main(["watchlist", "add", "AAPL", "MSFT"]) == 0
    assert main(["watchlist", "remove", "MSFT"]) == 0
    proc = run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15",
                "--partition-range", "2024-11-25|AAPL...2024-11-29|MSFT"], env, check=False)
    assert proc.returncode != 0
    last = (proc.stderr + proc.stdout).strip().splitlines()[-1]
    assert "partition key '2024-11-29|MSFT' does not exist: 'MSFT' is not a symbol partition" in last, last
    assert "2024-11-25|AAPL" not in last
    assert rows(store_url) == []


def test_dagster_asset_materialize_refuses_a_holiday(env, store_url):
    assert main(["watchlist", "add", "AAPL"]) == 0
    proc = run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15", "--partition", "2024-11-28|AAPL"], env, check=False)
    assert proc.returncode != 0
    assert "partition key '2024-11-28|AAPL' does not exist: '2024-11-28' is not a session partition" in proc.stderr
    assert rows(store_url) == []


# ---------------------------------------------------------------------- ensure-coverage and demo
def watchlist_size(url):
    with shared_engine(url).connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM watchlist").scalar()


BAD_SETTINGS = [
    ("BACKFILL_PROVIDERS", "demo,nope", "unknown provider(s) 'nope' in BACKFILL_PROVIDERS"),
    ("BACKFILL_GAP_DAYS_M15", "soon", "BACKFILL_GAP_DAYS_M15='soon' is not a whole number"),
    ("BACKFILL_EOD_DELAY_MINUTES", "999", "the end-of-day delay must be between 0 and 180 minutes"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_SETTINGS, ids=[s[0] for s in BAD_SETTINGS])
def test_ensure_coverage_refuses_a_bad_setting_before_touching_anything(env, store_url, monkeypatch, capsys,
                                                                        name, value, message):
    # The daemon's code location reads these settings too: a backfill launched with them never runs.
    monkeypatch.setenv(name, value)
    assert main(["ensure-coverage", "TSLA", "--sessions", "2"]) == 2
    assert message in capsys.readouterr().err
    assert watchlist_size(store_url) == 0
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("symbols") == []
    assert instance.get_backfills() == []


@pytest.mark.parametrize(("name", "value", "message"), [
    BAD_SETTINGS[0],
    ("BACKFILL_PROVIDERS", "alpaca,demo", "ALPACA_API_KEY"),  # the demo's runs happen here, with this env
], ids=["unknown provider", "missing key"])
def test_demo_refuses_a_bad_setting_before_touching_anything(env, store_url, monkeypatch, capsys, name, value, message):
    for variable in ("ALPACA_API_KEY", "ALPACA_API_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(name, value)
    assert main(["demo", "--symbols", "AAPL", "--sessions", "2"]) == 2
    assert message in capsys.readouterr().err
    assert watchlist_size(store_url) == 0
    assert dg.DagsterInstance.get().get_dynamic_partitions("symbols") == []


@pytest.mark.parametrize("args", [
    ["--wait", "--timeout", "-5"],
    ["--wait", "--timeout", "0"],
    ["--wait", "--timeout", "soon"],
    ["--timeout", "60"],  # without --wait nothing waits: say so rather than ignore it
    ["--sessions", "0"],
], ids=["negative timeout", "zero timeout", "timeout not a number", "timeout without wait", "no sessions"])
def test_ensure_coverage_refuses_bad_arguments(env, store_url, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["ensure-coverage", "TSLA", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert args[-1] in err and ("--timeout" in err or "--sessions" in err), err
    assert watchlist_size(store_url) == 0


def test_ensure_coverage_says_when_history_start_clips_the_sessions(env, monkeypatch, capsys):
    cal = xnys()
    recent = cal.recent_sessions(100_000, pd.Timestamp.now(tz="UTC"), closed_only=False)
    start = recent[-4]  # so exactly 4 sessions have opened since the history start
    monkeypatch.setenv("BACKFILL_HISTORY_START", start.isoformat())
    assert main(["ensure-coverage", "TSLA", "--timeframe", "d1", "--sessions", "100000"]) == 0
    out = capsys.readouterr().out
    assert f"only 4 sessions since BACKFILL_HISTORY_START={start}; covering those" in out
    assert "launched backfill" in out and "4 partition(s) of bars_d1" in out
    # asking for no more than there are says nothing
    assert main(["ensure-coverage", "TSLA", "--timeframe", "d1", "--sessions", "4"]) == 0
    assert "only" not in capsys.readouterr().out


def test_ensure_coverage_leaves_sessions_no_provider_had_bars_for_alone_and_says_so(env, store_url, capsys):
    # The gap sensor's rule (store.gaps.requested_gaps): a session every provider answered without
    # bars three times is halted or delisted; a request does not ask a fourth time.
    from backfill_dagster.domain.timeframes import Timeframe
    from backfill_dagster.store import BarStore, CoverageEntry

    cal = xnys()
    now = pd.Timestamp.now(tz="UTC")
    gone, done = cal.recent_sessions(2, now, closed_only=False)
    store = BarStore(shared_engine(store_url), cal)
    for hours in (30, 20, 10):
        store.record_refusals(Timeframe.D1, {("TSLA", gone): "no bars"}, expected={gone: 1},
                              at=now - pd.Timedelta(hours=hours))
    store.replace_partitions(Timeframe.D1, store.read_bars(Timeframe.D1, []), [CoverageEntry("TSLA", done, 1, 1, True)],
                             provider="demo", adjustment="split", fetched_at=now)
    assert main(["ensure-coverage", "TSLA", "--timeframe", "d1", "--sessions", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 session(s) had no bars from any provider 3 times: left alone (halted or delisted?)" in out
    assert f"nothing else to do: TSLA has the others of the 2 d1 sessions ({gone} .. {done})" in out
    assert dg.DagsterInstance.get().get_backfills() == []
    # One attempt fewer and it is asked again at once: a request does not wait out retry_empty_after.
    with shared_engine(store_url).begin() as conn:
        conn.exec_driver_sql("UPDATE bar_coverage SET attempts = 2 WHERE symbol = 'TSLA' AND status = 'empty'")
    assert main(["ensure-coverage", "TSLA", "--timeframe", "d1", "--sessions", "2"]) == 0
    assert "1 partition(s) of bars_d1" in capsys.readouterr().out


def test_ensure_coverage_launches_many_symbols_as_one_backfill_of_few_runs(env, capsys):
    # One backfill, whatever the number of symbols: the daemon forms it into boxes of many symbols.
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.definitions import automation_tick_evaluation_context as runs

    from backfill_dagster.instance import backfill_runs

    symbols = [f"S{i:02d}" for i in range(30)]
    assert main(["ensure-coverage", *symbols, "--timeframe", "d1", "--sessions", "2"]) == 0
    out = capsys.readouterr().out
    assert "launched backfill " in out and "60 partition(s) of bars_d1" in out
    instance = dg.DagsterInstance.get()
    (backfill,) = instance.get_backfills()
    assert backfill.title == "ensure-coverage S00 .. S29 (30 symbols) d1 x 2 sessions"
    targets = list(backfill.asset_backfill_data.target_subset.iterate_asset_partitions())
    assert len({k.partition_key for k in targets}) == 60
    # The runs the daemon will make of it: one box of 30 symbols x 2 sessions.
    from backfill_dagster.cli import checked_definitions
    from backfill_dagster.settings import Settings

    backfill_runs.install()
    with partition_loading_context(dynamic_partitions_store=instance):
        requests = runs.build_run_requests_with_backfill_policies(
            targets, checked_definitions(Settings()).resolve_asset_graph(), instance)
    assert len(requests) == 1


def test_demo_says_when_history_start_clips_the_sessions(env, monkeypatch, capsys):
    start = xnys().recent_sessions(2, pd.Timestamp.now(tz="UTC"))[0]  # two closed sessions since
    monkeypatch.setenv("BACKFILL_HISTORY_START", start.isoformat())
    assert main(["demo", "--symbols", "AAPL", "--sessions", "10"]) == 0
    out = capsys.readouterr().out
    assert f"only 2 closed sessions since BACKFILL_HISTORY_START={start}; covering those" in out
    assert "AAPL x 2 sessions" in out


def heartbeat(instance, age_s):
    """A backfill daemon's heartbeat, as the daemon writes it (dagster._daemon.daemon)."""
    from dagster._daemon.types import DaemonHeartbeat

    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age_s, "BACKFILL", "test-daemon", None))


@pytest.mark.parametrize(("heartbeat_age", "warned"), [(None, "has ever sent a heartbeat"), (3600, "the last heartbeat was 60 minutes ago"), (0, None)],
                         ids=["no daemon ever", "daemon stopped an hour ago", "daemon running"])
def test_ensure_coverage_wait_says_when_no_daemon_picks_the_backfill_up(env, monkeypatch, capsys,
                                                                        heartbeat_age, warned):
    import backfill_dagster.cli_watch

    monkeypatch.setattr(backfill_dagster.cli_watch, "DAEMON_GRACE_S", 1.0)
    instance = dg.DagsterInstance.get()
    if heartbeat_age is not None:
        heartbeat(instance, heartbeat_age)
    started = time.monotonic()
    assert main(["ensure-coverage", "TSLA", "--timeframe", "d1", "--sessions", "2", "--wait", "--timeout", "4"]) == 1
    assert time.monotonic() - started < 120  # gave up after its 4 s timeout, not hung
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "no backfill daemon" in line]
    if warned is None:
        assert warning == [], captured.err
        assert "still REQUESTED after 4.0s; it goes on in the daemon" in captured.out
        return
    assert len(warning) == 1, captured.err  # once, not at every poll
    assert warned in warning[0] and os.environ["DAGSTER_HOME"] in captured.err
    assert "dagster-daemon run" in captured.err and "dagster dev" in captured.err
    assert "still REQUESTED after 4.0s" in captured.out and "runs when a daemon starts" in captured.out


def test_watchlist_add_says_how_a_share_class_is_spelled(env, capsys):
    assert main(["watchlist", "add", "BRK-B", "AAPL"]) == 0
    captured = capsys.readouterr()
    assert "BRK-B is stored as BRK.B (share classes are written with '.')" in captured.err
    assert main(["watchlist", "list"]) == 0
    assert "BRK.B" in capsys.readouterr().out


def test_the_embedded_instance_forms_backfill_runs_as_boxes(tmp_path, monkeypatch):
    # `dagster dev` on the embedded instance starts a daemon that loads only the instance's
    # plug-ins: the scheduler there makes it form a backfill's runs as boxes.
    from backfill_dagster.cli import EMBEDDED_INSTANCE, EMBEDDED_INSTANCE_BEFORE_BOXES, dagster_instance
    from backfill_dagster.settings import Settings

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings(data_dir=tmp_path)
    config = settings.dagster_home / "dagster.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(EMBEDDED_INSTANCE_BEFORE_BOXES)  # made by an earlier version: brought up to date
    with dagster_instance(settings):
        pass
    assert config.read_text() == EMBEDDED_INSTANCE
    probe = (
        "import dagster as dg\n"
        "from dagster._core.definitions import automation_tick_evaluation_context as m\n"
        "with dg.DagsterInstance.get():\n"
        "    print(m._build_run_requests_with_backfill_policy.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "DAGSTER_HOME": str(config.parent)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "backfill_dagster.instance.backfill_runs"
    # An operator's own file is left as written.
    config.write_text("telemetry:\n  enabled: true\n")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with dagster_instance(settings):
        pass
    assert config.read_text() == "telemetry:\n  enabled: true\n"

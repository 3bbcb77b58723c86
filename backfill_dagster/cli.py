"""`backfill-dagster`: operator commands.

    backfill-dagster watchlist add|remove SYMBOL...   edit the watchlist and the symbol partitions
    backfill-dagster watchlist list
    backfill-dagster coverage [--symbol S] [--timeframe TF]
    backfill-dagster corporate-actions SYMBOL            splits and dividends known, per provider, and repairs
    backfill-dagster demo [--symbols ...] [--sessions N]   a real Dagster run on the embedded default
    backfill-dagster ensure-coverage SYMBOL... [--timeframe m15] [--sessions 30] [--wait [--timeout S]]
                                                        backfill what is missing, as a Dagster backfill
    backfill-dagster db-init                            apply the schema to BACKFILL_DATABASE_URL

The Dagster instance is the one at DAGSTER_HOME; without it, <data dir>/dagster_home.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import date

import pandas as pd

from backfill_dagster.cli_coverage import detail_report, summary_report
from backfill_dagster.domain.calendar import NotASessionError, SessionCalendar, SessionNotOpenError, xnys
from backfill_dagster.domain.gap_policy import GapPolicyError
from backfill_dagster.domain.symbols import InvalidSymbolError, normalize_symbols, respelled_symbols, respelling_notice
from backfill_dagster.domain.timeframes import Timeframe, UnknownTimeframeError
from backfill_dagster.orchestration.tags import LAUNCHED_BY_TAG
from backfill_dagster.providers.base import ProviderConfigError
from backfill_dagster.settings import Settings, SettingsError, database_url_is_set, provider_config
from backfill_dagster.store import (
    StoreConfigError,
    StoreUnavailableError,
    Watchlist,
    url_without_password,
    shared_engine,
)
from backfill_dagster.store.actions import ActionStore
from backfill_dagster.store.coverage import coverage_summary

DEMO_SYMBOLS = ("AAPL", "MSFT", "NVDA")
DEMO_SESSIONS = 15

USER_ERRORS = (
    GapPolicyError,
    InvalidSymbolError,
    NotASessionError,
    SessionNotOpenError,
    ProviderConfigError,
    SettingsError,
    StoreConfigError,
    StoreUnavailableError,
    UnknownTimeframeError,
)


class CommandError(RuntimeError):
    """A command that could not do what was asked; the message says why."""


# The embedded default is offline: SQLite storage in this directory, no telemetry. Its scheduler
# plug-in makes its daemon run a backfill as boxes of many symbols, as the production instance's
# does (instance/scheduler.py).
EMBEDDED_INSTANCE = (
    "telemetry:\n  enabled: false\n"
    "scheduler:\n  module: backfill_dagster.instance.scheduler\n  class: BoxingDaemonScheduler\n"
)
# What an embedded instance was made with before: brought up to date when found unchanged.
EMBEDDED_INSTANCE_BEFORE_BOXES = "telemetry:\n  enabled: false\n"


def dagster_instance(settings: Settings):
    """The instance at DAGSTER_HOME, or the embedded one under the data directory."""
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):
        home = settings.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists() or config.read_text() == EMBEDDED_INSTANCE_BEFORE_BOXES:
            config.write_text(EMBEDDED_INSTANCE)
        os.environ["DAGSTER_HOME"] = str(home)
        print(f"DAGSTER_HOME is not set: using the embedded instance at {home}", file=sys.stderr)
    return DagsterInstance.get()


def checked_definitions(settings: Settings):
    """The definitions as the code location builds them from this environment. Every setting the
    daemon's runs would refuse (providers; the settings were checked as they were read) refuses
    here, so a command can call this before it writes anything."""
    from backfill_dagster.definitions import build_definitions

    return build_definitions(settings, env_has_database_url=database_url_is_set())


def check_provider_config(settings: Settings, calendar: SessionCalendar) -> None:
    """Build the providers from this process's environment: a missing key or bad URL refuses here.
    Only for runs in this process; a daemon's runs read the daemon's environment."""
    from backfill_dagster.domain.clock import utcnow
    from backfill_dagster.providers.http import RetryPolicy
    from backfill_dagster.providers.registry import build_providers

    policy = RetryPolicy(attempts=settings.http_attempts, backoff_s=settings.http_backoff_s)
    build_providers(settings.providers, provider_config(), calendar, utcnow, policy=policy)


def recent_sessions(calendar: SessionCalendar, count: int, settings: Settings, *, closed_only: bool) -> list[date]:
    """The last `count` sessions (closed, or opened), none before BACKFILL_HISTORY_START; says so
    when that start leaves fewer than asked."""
    now = pd.Timestamp.now(tz="UTC")
    sessions = [s for s in calendar.recent_sessions(count, now, closed_only=closed_only) if s >= settings.history_start]
    if sessions and len(sessions) < count:
        print(f"only {len(sessions)} {'closed ' if closed_only else ''}sessions since "
              f"BACKFILL_HISTORY_START={settings.history_start}; covering those")
    return sessions


def user_symbols(raws: Sequence[str]) -> list[str]:
    """The symbols as the store spells them; says which were written differently (BRK-B)."""
    symbols = normalize_symbols(raws)
    for given, stored in respelled_symbols(raws):
        print(respelling_notice(given, stored), file=sys.stderr)
    return symbols


# ---------------------------------------------------------------------- commands
def cmd_watchlist(args: argparse.Namespace, settings: Settings) -> int:
    watchlist = Watchlist(shared_engine(settings.resolved_database_url))
    if args.action == "list":
        entries = watchlist.entries()
        if not entries:
            print("the watchlist is empty: backfill-dagster watchlist add AAPL MSFT")
        for e in entries:
            state = "active" if e["active"] else "inactive"
            print(f"{e['symbol']:<10} {state:<8} added {e['added_at']:%Y-%m-%d %H:%M}Z")
        return 0
    from backfill_dagster.orchestration.partitions import sync_symbol_partitions

    symbols = user_symbols(args.symbols)  # refuse bad input before touching anything
    instance = dagster_instance(settings)
    if args.action == "add":
        change = watchlist.add(symbols)
        sync_symbol_partitions(instance, add=symbols)
        print(f"added: {', '.join(change.changed) or 'none'}; already active: {', '.join(change.unchanged) or 'none'}")
    else:
        change = watchlist.remove(symbols)
        sync_symbol_partitions(instance, remove=symbols)
        print(f"removed: {', '.join(change.changed) or 'none'}; not active: {', '.join(change.unchanged) or 'none'}")
    return 0


def cmd_coverage(args: argparse.Namespace, settings: Settings) -> int:
    engine = shared_engine(settings.resolved_database_url)
    timeframe = Timeframe.parse(args.timeframe).value if args.timeframe else None
    now = pd.Timestamp.now(tz="UTC")
    if args.symbol and args.detail:
        symbol = normalize_symbols([args.symbol])[0]
        print(detail_report(engine, symbol, settings.gap_policy, xnys(), now, settings.history_start, timeframe))
        print(format_repairs(ActionStore(engine), [symbol]), end="")
        return 0
    symbols = normalize_symbols([args.symbol]) if args.symbol else None
    print(summary_report(engine, settings.gap_policy, xnys(), now, settings.history_start,
                         symbols=symbols, timeframe=timeframe))
    print(format_repairs(ActionStore(engine), symbols), end="")
    return 0


def cmd_corporate_actions(args: argparse.Namespace, settings: Settings) -> int:
    symbol = user_symbols([args.symbol])[0]
    store = ActionStore(shared_engine(settings.resolved_database_url))
    from backfill_dagster.providers.registry import action_publishers, check_provider_names

    check_provider_names(settings.providers)
    print(format_actions(store.actions([symbol]), store.sources([symbol]), store.checks([symbol]), symbol,
                         action_publishers(settings.providers)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Backfill a few symbols over recent sessions in real Dagster runs, then show coverage."""
    from dagster import DagsterRunStatus

    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import (
        SYMBOLS_PARTITIONS_NAME,
        range_tags,
        symbol_blocks,
        sync_symbol_partitions,
    )

    symbols = user_symbols(args.symbols)
    calendar = xnys()
    # Everything that can refuse refuses before the watchlist or the instance is touched.
    job = checked_definitions(settings).resolve_job_def(ALL_BARS_JOB)
    check_provider_config(settings, calendar)  # the demo's runs happen in this process
    sessions = recent_sessions(calendar, args.sessions, settings, closed_only=True)
    if not sessions:
        raise CommandError(f"no closed session since BACKFILL_HISTORY_START={settings.history_start}")
    instance = dagster_instance(settings)
    Watchlist(shared_engine(settings.resolved_database_url)).add(symbols)
    sync_symbol_partitions(instance, add=symbols)

    order = instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    print(
        f"backfilling {', '.join(symbols)} x {len(sessions)} sessions "
        f"({sessions[0]} .. {sessions[-1]}), timeframes m15, h1, h4, d1, "
        f"providers {', '.join(settings.providers)}, store {url_without_password(settings.resolved_database_url)}"
    )
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    failed = 0
    for block in symbol_blocks(symbols, order):
        result = job.execute_in_process(
            instance=instance,
            tags=range_tags((block[0], sessions[0]), (block[-1], sessions[-1])),
            run_config=quiet,
            raise_on_error=False,
        )
        status = instance.get_run_by_id(result.run_id).status
        print(f"  run {result.run_id} ({', '.join(block)}): {status.value}")
        failed += status != DagsterRunStatus.SUCCESS
    print()
    print(summary_report(shared_engine(settings.resolved_database_url), settings.gap_policy, calendar,
                         pd.Timestamp.now(tz="UTC"), settings.history_start, symbols=symbols))
    print(f"\nDagster instance: {os.environ['DAGSTER_HOME']} (see it with: dagster dev)")
    return 1 if failed else 0


def _named(symbols: Sequence[str]) -> str:
    """Symbols for a backfill's title: all of a few, the first and last of many."""
    return " ".join(symbols) if len(symbols) <= 5 else f"{symbols[0]} .. {symbols[-1]} ({len(symbols)} symbols)"


def cmd_ensure_coverage(args: argparse.Namespace, settings: Settings) -> int:
    """Make sure symbols have `--sessions` recent sessions of a timeframe: launch a Dagster backfill
    of exactly the missing partitions (the UI shows it), and with --wait follow it to the end."""
    import dagster as dg

    from backfill_dagster.cli_watch import DaemonWatch, LedgerProgress, ProgressBar
    from backfill_dagster.orchestration.backfills import launch_backfill, wait_for_backfill
    from backfill_dagster.orchestration.partitions import partition_key, sync_symbol_partitions
    from backfill_dagster.store.gaps import requested_gaps

    symbols = user_symbols(args.symbols)
    timeframe = Timeframe.parse(args.timeframe)
    calendar = xnys()
    # Everything that can refuse refuses before the watchlist or the instance is touched: the
    # daemon's code location builds these definitions from the same settings, and a backfill
    # launched against settings it refuses would never run.
    asset_graph = checked_definitions(settings).resolve_asset_graph()
    sessions = recent_sessions(calendar, args.sessions, settings, closed_only=False)
    if not sessions:
        raise CommandError(f"no session has opened since BACKFILL_HISTORY_START={settings.history_start}")
    now = pd.Timestamp.now(tz="UTC")
    engine = shared_engine(settings.resolved_database_url)
    instance = dagster_instance(settings)
    added = Watchlist(engine).add(symbols).changed
    sync_symbol_partitions(instance, add=symbols)
    if added:
        print(f"added to the watchlist: {', '.join(added)}")

    # The gap sensor's rule with an operator's request policy: asked again at once, no settle time,
    # but sessions no provider had bars for `empty_attempts` times are left alone (domain/gap_policy.py).
    policy = settings.gap_policy.on_request()
    still_open = [s for s in sessions if not calendar.has_closed(s, now, settings.extended_hours)]
    position = {s: i for i, s in enumerate(symbols)}

    def missing_at(at: pd.Timestamp):
        chosen = requested_gaps(engine, timeframe, symbols, sessions, policy=policy, now=at, still_open=still_open)
        return chosen, sorted(chosen.partitions, key=lambda p: (position[p[0]], p[1]))

    chosen, missing = missing_at(now)
    if chosen.exhausted:
        print(f"{chosen.exhausted} session(s) had no bars from any provider {policy.empty_attempts} times: left "
              f"alone (halted or delisted?); see backfill-dagster coverage --symbol {symbols[0]} --detail")
    if not missing:
        span = f"{len(sessions)} {timeframe.value} sessions ({sessions[0]} .. {sessions[-1]})"
        if chosen.exhausted:
            print(f"nothing else to do: {_and_list(symbols)} {_have(symbols)} the others of the {span}")
        else:
            print(f"nothing to do: {_and_list(symbols)} {_have(symbols)} all {span}")
        return 0
    # Derived: fetch its source too where that is a gap (stale or derive-only partitions need not).
    assets = [timeframe.source, timeframe] if timeframe.source is not None and chosen.intraday else [timeframe]
    # One backfill: the daemon runs it as boxes of many symbols (instance/backfill_runs.py), so even
    # the whole market is a few runs, submitted in its first iteration.
    short = [s for s in symbols if s in {s for s, _ in missing}]
    backfill_id = launch_backfill(
        instance, asset_graph, [partition_key(s, d) for s, d in missing], [dg.AssetKey(t.asset_name) for t in assets],
        title=f"ensure-coverage {_named(short)} {timeframe.value} x {len(sessions)} sessions",
        description=f"{len(missing)} missing partition(s), launched by backfill-dagster ensure-coverage",
        tags={LAUNCHED_BY_TAG: "ensure-coverage"},
    )
    backfill_ids = [backfill_id]
    print(f"launched backfill {backfill_id}: {len(missing)} partition(s) of "
          f"{', '.join(t.asset_name for t in assets)} (see it in the UI under Runs > Backfills)")
    if not args.wait:
        return 0

    # The ledger is the truth about what is covered, and it moves as each run commits; Dagster's
    # counts move only between the backfill daemon's iterations. Both are shown.
    bar = ProgressBar(sys.stdout)
    wanted = set(missing)
    ledger = LedgerProgress(lambda: len(wanted) - len(wanted & set(missing_at(pd.Timestamp.now(tz="UTC"))[1])),
                            len(wanted))

    def show(progress, covered=None):
        frame = coverage_summary(engine, symbols=symbols, timeframe=timeframe.value)
        bars = int(frame["bars"].sum()) if len(frame) else 0
        bar.show(progress, bars, covered or ledger.read())

    watch = DaemonWatch(instance, ", ".join(backfill_ids), bar)

    def poll(progress):
        watch(progress)
        covered = ledger.poll()
        if covered is not None:
            show(progress, covered)

    try:
        progress = wait_for_backfill(instance, backfill_ids, on_progress=show, on_poll=poll, timeout_s=args.timeout)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped waiting; backfill {', '.join(backfill_ids)} stays in the instance (Runs > Backfills)")
        return 130
    bar.close()
    backfill_id = ", ".join(backfill_ids)
    if not progress.finished:
        goes_on = "it goes on in the daemon" if not watch.warned else "it stays queued and runs when a daemon starts"
        print(f"backfill {backfill_id} still {progress.status.value} after {args.timeout}s; {goes_on}")
        return 1
    if progress.succeeded:
        still = set(missing_at(pd.Timestamp.now(tz="UTC"))[1])
        print(f"backfill {backfill_id} {progress.status.value}: {len(wanted - still)} of {len(wanted)} partition(s) covered")
        return 0 if not (still & wanted) else 1
    print(f"backfill {backfill_id} {progress.status.value}: {progress.failed} asset partition(s) failed; "
          f"see backfill-dagster coverage --symbol {symbols[0]} --detail", file=sys.stderr)
    return 1


def cmd_db_init(_args: argparse.Namespace, settings: Settings) -> int:
    shared_engine(settings.resolved_database_url)  # connects and applies the schema
    print(f"schema applied to {url_without_password(settings.resolved_database_url)}")
    return 0


# ---------------------------------------------------------------------- output
def _and_list(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _have(names: Sequence[str]) -> str:
    return "has" if len(names) == 1 else "have"


def format_repairs(store: ActionStore, symbols: Sequence[str] | None) -> str:
    """A line per split whose history is being repaired (or whose repair failed), for `coverage`."""
    from backfill_dagster.domain.corporate_actions import OPEN_REPAIRS, RepairState

    splits = store.splits(states=[*OPEN_REPAIRS, RepairState.FAILED], symbols=symbols)
    if not splits:
        return ""
    lines = ["", "history being repaired after a split (backfill-dagster corporate-actions SYMBOL):"]
    for split in splits:
        backfill = f", backfill {split.backfill_id}" if split.backfill_id else ""
        lines.append(f"  {split.describe()}: {split.state.value}{backfill}: {split.note or ''}".rstrip(": "))
    return "\n".join(lines) + "\n"


def format_actions(
    actions: pd.DataFrame, sources: pd.DataFrame, checks: pd.DataFrame, symbol: str, publishers: Sequence[str]
) -> str:
    """Every action known for one symbol, each provider's report of it, and when each was asked;
    `publishers` are the configured providers that publish corporate actions."""
    from fractions import Fraction

    from backfill_dagster.domain.corporate_actions import ratio_text

    asked = ", ".join(f"{r.provider} {pd.Timestamp(r.last_checked_at):%Y-%m-%d %H:%M}Z"
                      f" (ex-dates {_day_text(r.checked_from)}..{_day_text(r.checked_through)})" for r in checks.itertuples())
    if actions.empty:
        if checks.empty and not publishers:
            from backfill_dagster.providers.registry import action_publishers

            return (f"no corporate actions known for {symbol}: no provider in BACKFILL_PROVIDERS publishes them "
                    f"(of the known providers, {_and_list(action_publishers())} do), so no split is recorded and "
                    "none is repaired; bars_d1:no_unrecorded_split still flags a suspected one")
        if checks.empty:
            return (f"no corporate actions known for {symbol}: no provider was asked yet (the corporate_actions "
                    f"asset asks {_and_list(publishers)})")
        return f"no corporate actions known for {symbol}; asked: {asked}"

    def figures(r) -> str:
        if r.kind == "split":
            return f"split {ratio_text(Fraction(int(r.split_to), int(r.split_from)))}"
        return f"dividend {r.cash_amount:g}"

    lines = [f"{'ex-date':<10} {'action':<16} {'first seen (UTC)':<16} repair"]
    for r in actions.itertuples():
        seen = f"{pd.Timestamp(r.first_seen):%Y-%m-%d %H:%M}"
        repair = "-" if r.repair_state is None or pd.isna(r.repair_state) else r.repair_state
        if r.kind == "split":
            if r.repair_backfill_id:
                repair += f" (backfill {r.repair_backfill_id}, {int(r.repair_attempts)} launched)"
            if r.repair_note:
                repair += f": {r.repair_note}"
            if r.basis_since is not None and not pd.isna(r.basis_since):
                repair += f"; bars fetched before {pd.Timestamp(r.basis_since):%Y-%m-%d %H:%M}Z were on the old basis"
        lines.append(f"{_day_text(r.ex_date):<10} {figures(r):<16} {seen:<16} {repair}")
        reports = sources[(sources.kind == r.kind) & (sources.ex_date == r.ex_date)]
        for s in reports.itertuples():
            mark = "*" if s.provider == r.source else " "
            ident = f" id {s.provider_id}" if s.provider_id else ""
            lines.append(f"  {mark} {s.provider:<8} {figures(s):<16} first seen {pd.Timestamp(s.first_seen):%Y-%m-%d %H:%M}Z, "
                         f"last {pd.Timestamp(s.last_seen):%Y-%m-%d %H:%M}Z{ident}")
    lines.append(f"\n* the provider whose figures stand for the action; asked: {asked or 'never'}")
    return "\n".join(lines)


def _day_text(value) -> str:
    return "-" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)[:10]


# ---------------------------------------------------------------------- parser
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: ask for at least 1")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0 (or leave it out to wait until the end)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfill-dagster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    wl = sub.add_parser("watchlist", help="edit or list the watchlist")
    wl_sub = wl.add_subparsers(dest="action", required=True)
    for action, text in (("add", "activate symbols"), ("remove", "deactivate symbols")):
        p = wl_sub.add_parser(action, help=text)
        p.add_argument("symbols", nargs="+", metavar="SYMBOL")
    wl_sub.add_parser("list", help="list symbols")
    wl.set_defaults(func=cmd_watchlist)

    cov = sub.add_parser("coverage", help="show the coverage ledger")
    cov.add_argument("--symbol", help="only this symbol")
    cov.add_argument("--timeframe", help="only this timeframe (m15, h1, h4, d1)")
    cov.add_argument("--detail", action="store_true", help="per-session rows (needs --symbol)")
    cov.set_defaults(func=cmd_coverage)

    actions = sub.add_parser("corporate-actions", help="splits and dividends known for a symbol, per provider, and repairs")
    actions.add_argument("symbol", metavar="SYMBOL")
    actions.set_defaults(func=cmd_corporate_actions)

    demo = sub.add_parser("demo", help="backfill a few symbols on the embedded default and show coverage")
    demo.add_argument("--symbols", nargs="+", default=list(DEMO_SYMBOLS), metavar="SYMBOL")
    demo.add_argument("--sessions", type=positive_int, default=DEMO_SESSIONS, help="recent closed sessions")
    demo.set_defaults(func=cmd_demo)

    ens = sub.add_parser(
        "ensure-coverage", help="backfill the missing recent sessions of symbols (adds unknown symbols)"
    )
    ens.add_argument("symbols", nargs="+", metavar="SYMBOL")
    ens.add_argument("--timeframe", default="m15", help="m15, h1, h4 or d1 (default m15)")
    ens.add_argument("--sessions", type=positive_int, default=30,
                     help="recent sessions to cover (default 30; never before BACKFILL_HISTORY_START)")
    ens.add_argument("--wait", action="store_true", help="follow the backfill with a progress bar until it ends")
    ens.add_argument("--timeout", type=positive_seconds, default=None,
                     help="with --wait: give up waiting after this many seconds (exit status 1)")
    ens.set_defaults(func=cmd_ensure_coverage)

    init = sub.add_parser("db-init", help="apply the schema to the configured database")
    init.set_defaults(func=cmd_db_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "timeout", None) is not None and not args.wait:
        parser.error(f"--timeout {args.timeout:g} only bounds --wait: add --wait, or drop --timeout")
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings) or 0)
    except USER_ERRORS + (CommandError,) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

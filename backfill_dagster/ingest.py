"""Fill partitions: fetch (m15, d1) or derive (h1, h4) their bars, validate, and store them.

This is the work a Dagster asset step does, as plain functions over the router and the store, so it
is testable without Dagster. A run's partitions become the fewest provider requests (planner); each
response is validated; every partition is then written atomically with its coverage row, or — when
any of its bars is invalid or its request failed — offered to the next eligible provider, and at
last recorded as failed with the reason. Finished partitions are committed as they go, so a long
run's work survives a later failure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from backfill_dagster.bars import Validation, validate_bars
from backfill_dagster.calendar import SessionCalendar
from backfill_dagster.providers.base import FetchRequest, Provider, ProviderError
from backfill_dagster.providers.planner import plan_requests
from backfill_dagster.providers.router import Router
from backfill_dagster.resample import resample_bars
from backfill_dagster.store.bars import BarStore, CoverageEntry
from backfill_dagster.timeframes import Timeframe

Partition = tuple[str, date]
Clock = Callable[[], pd.Timestamp]
Log = Callable[[str], None]

DERIVE_SYMBOLS_PER_CHUNK = 25


def utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


@dataclass
class IngestReport:
    """What one step did to its partitions."""

    timeframe: Timeframe
    partitions: int = 0
    written: list[Partition] = field(default_factory=list)
    bars_written: int = 0
    bars_expected: int = 0
    api_calls: Counter = field(default_factory=Counter)  # provider name -> calls
    served_by: Counter = field(default_factory=Counter)  # provenance -> partitions
    rejected_bars: int = 0
    outside_hours: int = 0
    failures: dict[Partition, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def failure_summary(self, limit: int = 10) -> str:
        lines = [
            f"{symbol} {session.isoformat()} {self.timeframe.value}: {error}"
            for (symbol, session), error in sorted(self.failures.items())[:limit]
        ]
        more = len(self.failures) - limit
        if more > 0:
            lines.append(f"... and {more} more (see the bar_coverage table, status 'failed')")
        return "\n".join(lines)


def require_fetchable(
    partitions: Iterable[Partition], calendar: SessionCalendar, now: pd.Timestamp, extended: bool
) -> None:
    """Refuse, before anything is fetched or written, partitions that are not sessions or whose
    session has not opened yet (Dagster's end_offset shows the next session on non-session days)."""
    for session in sorted({d for _, d in partitions}):
        calendar.require_opened(session, now, extended)


def fetch_partitions(
    partitions: Iterable[Partition],
    timeframe: Timeframe,
    router: Router,
    store: BarStore,
    *,
    clock: Clock = utcnow,
    run_id: str | None = None,
    log: Log = lambda _msg: None,
) -> IngestReport:
    """Fetch, validate and store the bars of the given partitions of a fetched timeframe."""
    if not timeframe.is_fetched:
        raise ValueError(f"{timeframe.value} is derived from {timeframe.source.value}, not fetched")
    calendar = router.calendar
    wanted = sorted(set(partitions))
    require_fetchable(wanted, calendar, clock(), router.extended)
    report = IngestReport(timeframe, partitions=len(wanted))
    report.bars_expected = _expected_total(wanted, timeframe, calendar, router.extended)

    candidates = router.assign(wanted, timeframe, clock())
    errors: dict[Partition, list[str]] = defaultdict(list)
    for partition, providers in candidates.items():
        if not providers:
            errors[partition].append(
                f"no configured provider ({', '.join(p.name for p in router.providers)}) can serve "
                f"{timeframe.value} bars for this session"
            )
    pending = [p for p in wanted if candidates[p]]
    while pending:
        by_provider: dict[Provider, list[Partition]] = defaultdict(list)
        for partition in pending:
            by_provider[candidates[partition][0]].append(partition)
        pending = []
        for provider, assigned in by_provider.items():
            requests = plan_requests(
                assigned, timeframe, provider.capabilities, calendar,
                extended=router.extended, adjustment=router.adjustment,
            )
            log(f"{provider.name}: {len(assigned)} partition(s) of {timeframe.value} in {len(requests)} request(s)")
            for request in requests:
                failed = _serve(request, provider, router, store, report, clock, run_id, log)
                for partition, error in failed.items():
                    errors[partition].append(error)
                    candidates[partition].pop(0)
                    if candidates[partition]:
                        pending.append(partition)

    written = set(report.written)
    report.failures = {p: " | then ".join(errors[p]) for p in wanted if p not in written}
    if report.failures:
        store.record_failures(
            timeframe, report.failures, expected=_expected_by_session(report.failures, timeframe, calendar, router.extended),
            at=clock(), run_id=run_id,
        )
    return report


def _serve(
    request: FetchRequest,
    provider: Provider,
    router: Router,
    store: BarStore,
    report: IngestReport,
    clock: Clock,
    run_id: str | None,
    log: Log,
) -> dict[Partition, str]:
    """Fetch one request and store its good partitions; return the failed ones with reasons."""
    calendar, timeframe = router.calendar, request.timeframe
    try:
        result = provider.fetch(request)
    except ProviderError as exc:
        log(f"request failed: {exc}")
        return {p: str(exc) for p in request.partitions}
    report.api_calls[provider.name] += result.api_calls
    now = clock()
    checked = validate_bars(
        result.bars, timeframe, calendar, symbols=request.symbols, extended=router.extended, now=now
    )
    report.outside_hours += checked.outside_hours
    bad = _tainted(checked, request)
    if bad:
        report.rejected_bars += store.quarantine(
            checked.rejected, timeframe, provider=provider.provenance, at=now, run_id=run_id
        )
    good = [p for p in request.partitions if p not in bad]
    valid = checked.valid
    keys = pd.MultiIndex.from_arrays([valid["symbol"], valid["session"]])
    valid = valid[keys.isin(good)]
    counts = Counter(zip(valid["symbol"], valid["session"]))
    expected = _expected_by_session(good, timeframe, calendar, router.extended)
    coverage = [
        CoverageEntry(
            symbol=s,
            session=d,
            bars=counts.get((s, d), 0),
            expected=expected[d],
            session_closed=calendar.has_closed(d, now, router.extended),
        )
        for s, d in good
    ]
    report.bars_written += store.replace_partitions(
        timeframe, valid, coverage, provider=provider.provenance,
        adjustment=router.adjustment.value, fetched_at=now, run_id=run_id,
    )
    report.written.extend(good)
    report.served_by[provider.provenance] += len(good)
    return {p: reason for p, reason in bad.items()}


def _tainted(checked: Validation, request: FetchRequest) -> dict[Partition, str]:
    """Partitions of the request that a rejected bar makes untrustworthy, with the reason.

    A rejected bar taints its own partition; one that cannot be placed in a requested session taints
    its symbol's partitions in the request; one for a symbol never requested taints them all.
    """
    out: dict[Partition, str] = {}
    if checked.rejected.empty:
        return out
    sessions, symbols = set(request.sessions), set(request.symbols)
    per_partition: dict[Partition, list] = defaultdict(list)
    for row in checked.rejected.itertuples(index=False):
        if row.symbol in symbols and row.session in sessions:
            targets = [(row.symbol, row.session)]
        elif row.symbol in symbols:
            targets = [(row.symbol, d) for d in request.sessions]
        else:
            targets = request.partitions
        for target in targets:
            per_partition[target].append(row)
    for partition, rows in per_partition.items():
        first = rows[0]
        at = "no timestamp" if pd.isna(first.ts) else pd.Timestamp(first.ts).isoformat()
        out[partition] = (
            f"provider returned {len(rows)} invalid bar(s) (kept in rejected_bars), "
            f"e.g. {first.symbol} at {at}: {first.reason}"
        )
    return out


def derive_partitions(
    partitions: Iterable[Partition],
    timeframe: Timeframe,
    store: BarStore,
    *,
    extended: bool = False,
    clock: Clock = utcnow,
    run_id: str | None = None,
    log: Log = lambda _msg: None,
) -> IngestReport:
    """Resample stored m15 bars into h1/h4 for the given partitions and store them."""
    source = timeframe.source
    if source is None:
        raise ValueError(f"{timeframe.value} is fetched, not derived")
    calendar = store.calendar
    wanted = sorted(set(partitions))
    require_fetchable(wanted, calendar, clock(), extended)
    report = IngestReport(timeframe, partitions=len(wanted))
    report.bars_expected = _expected_total(wanted, timeframe, calendar, extended)

    symbols = sorted({s for s, _ in wanted})
    for i in range(0, len(symbols), DERIVE_SYMBOLS_PER_CHUNK):
        chunk_symbols = set(symbols[i : i + DERIVE_SYMBOLS_PER_CHUNK])
        chunk = [p for p in wanted if p[0] in chunk_symbols]
        _derive_chunk(chunk, timeframe, store, extended, clock, run_id, report)
    if report.failures:
        store.record_failures(
            timeframe, report.failures, expected=_expected_by_session(report.failures, timeframe, calendar, extended),
            at=clock(), run_id=run_id,
        )
    log(f"derived {timeframe.value} for {len(report.written)} partition(s), {report.bars_written} bar(s)")
    return report


def _derive_chunk(
    chunk: Sequence[Partition],
    timeframe: Timeframe,
    store: BarStore,
    extended: bool,
    clock: Clock,
    run_id: str | None,
    report: IngestReport,
) -> None:
    calendar, source = store.calendar, timeframe.source
    ledger = store.coverage(source, sorted({s for s, _ in chunk}))
    status = {
        (r.symbol, r.session): r for r in ledger.itertuples(index=False)
    }
    ready = []
    for partition in chunk:
        row = status.get(partition)
        if row is None or row.status == "failed":
            state = "never fetched" if row is None else f"failed: {row.error}"
            report.failures[partition] = (
                f"cannot derive {timeframe.value}: its {source.value} partition is {state}; "
                f"materialize {source.asset_name} for it first"
            )
        else:
            ready.append(partition)
    if not ready:
        return
    m15 = store.read_bars(source, ready)
    derived = resample_bars(m15, timeframe, calendar, extended=extended)
    now = clock()
    checked = validate_bars(derived, timeframe, calendar, extended=extended, now=now)
    bad = {(r.symbol, r.session) for r in checked.rejected.itertuples(index=False)}
    for partition in bad:
        report.failures[partition] = "resampled bars failed validation (a bug: please report it)"
    valid = checked.valid
    source_provider = dict(zip(zip(m15["symbol"], m15["session"]), m15["provider"]))
    counts = Counter(zip(valid["symbol"], valid["session"]))
    expected = _expected_by_session(ready, timeframe, calendar, extended)
    groups: dict[str, list[CoverageEntry]] = defaultdict(list)
    for partition in ready:
        if partition in bad:
            continue
        symbol, session = partition
        label = f"resample:{source_provider.get(partition) or status[partition].provider or 'none'}"
        groups[label].append(
            CoverageEntry(
                symbol=symbol,
                session=session,
                bars=counts.get(partition, 0),
                expected=expected[session],
                # Derived bars are exactly as final as the m15 bars they come from.
                session_closed=bool(status[partition].session_closed),
            )
        )
    adjustment = m15["adjustment"].iloc[0] if len(m15) else "split"
    keys = pd.MultiIndex.from_arrays([valid["symbol"], valid["session"]])
    for label, entries in groups.items():
        members = [(e.symbol, e.session) for e in entries]
        rows = valid[keys.isin(members)]
        report.bars_written += store.replace_partitions(
            timeframe, rows, entries, provider=label, adjustment=adjustment, fetched_at=now, run_id=run_id
        )
        report.written.extend(members)
        report.served_by[label] += len(members)


def _expected_by_session(
    partitions: Iterable[Partition], timeframe: Timeframe, calendar: SessionCalendar, extended: bool
) -> dict[date, int]:
    sessions = sorted({d for _, d in partitions})
    if not sessions:
        return {}
    return dict(zip(sessions, (int(n) for n in calendar.expected_counts(sessions, timeframe, extended))))


def _expected_total(
    partitions: Sequence[Partition], timeframe: Timeframe, calendar: SessionCalendar, extended: bool
) -> int:
    per_session = _expected_by_session(partitions, timeframe, calendar, extended)
    return sum(per_session[d] for _, d in partitions)

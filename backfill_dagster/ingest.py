"""Fill partitions: fetch (m15, d1) or derive (h1, h4) their bars, validate, and store them.

This is the work a Dagster asset step does, as plain functions over the router and the store, so it
is testable without Dagster. A run's partitions become the fewest provider requests (planner); each
response is validated; every partition is then written atomically with its coverage row, or — when
any of its bars is invalid, its request failed, or the answer is worse than what is stored (no bars
for a closed session, fewer than final stored bars: `backfill_dagster.domain.ledger`) — offered to the
next eligible provider, and at last recorded as failed or empty with the reason. One instant per
request, read before it is sent (or the provider's own data cut-off, if earlier), decides both which
bars are finished and whether the session had closed. Finished partitions are committed as they go,
so a long run's work survives a later failure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction

import pandas as pd

from backfill_dagster.domain.bars import Validation, validate_bars
from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.clock import Clock, utcnow
from backfill_dagster.domain.ledger import LedgerStatus, Partition, refusal_note
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.resample import resample_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import FetchRequest, Provider
from backfill_dagster.providers.planner import plan_requests
from backfill_dagster.providers.router import Router
from backfill_dagster.store.bars import BarStore, CoverageEntry, Derivation

Log = Callable[[str], None]

# A derivation (one transaction) covers at most this many symbols and this many partitions: its m15
# bars are read, resampled and written together, so its memory follows the chunk, not the run
# (a run over 23 symbols x 504 sessions held ~300,000 m15 bars and their copies at once).
DERIVE_SYMBOLS_PER_CHUNK = 25
DERIVE_PARTITIONS_PER_CHUNK = 2_000


@dataclass
class IngestReport:
    """What one step did to its partitions."""

    timeframe: Timeframe
    partitions: int = 0
    written: list[Partition] = field(default_factory=list)
    # Answered no better than what is stored (a provisional answer over final bars): nothing to do.
    kept: list[Partition] = field(default_factory=list)
    # Committed complete by an earlier attempt of this run (a retry, a re-execution): not fetched or
    # derived again, and materialized as the written ones are.
    carried: list[Partition] = field(default_factory=list)
    bars_written: int = 0
    bars_expected: int = 0
    api_calls: Counter = field(default_factory=Counter)  # provider name -> calls
    served_by: Counter = field(default_factory=Counter)  # provenance -> partitions
    rejected_bars: int = 0
    outside_hours: int = 0
    failures: dict[Partition, str] = field(default_factory=dict)
    empty: set[Partition] = field(default_factory=set)  # of the failures: recorded empty (or kept final)

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
            lines.append(f"... and {more} more (see the bar_coverage table, status 'failed' or 'empty')")
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
    allow_fewer: bool = False,
    rewrite_reason: str | None = None,
    split_ratio: Fraction | None = None,
    committed: Iterable[Partition] = (),
) -> IngestReport:
    """Fetch, validate and store the bars of the given partitions of a fetched timeframe.
    `allow_fewer`: a final answer with fewer bars may replace final stored ones (never none);
    `rewrite_reason`: why this run rewrites them, recorded in the ledger (a split repair);
    `split_ratio`: a split repair's ratio — fewer bars only where the split's new basis explains
    every missing one;
    `committed`: partitions an earlier attempt of this run committed complete, not fetched again."""
    if not timeframe.is_fetched:
        raise ValueError(f"{timeframe.value} is derived from {timeframe.source.value}, not fetched")
    calendar = router.calendar
    wanted = sorted(set(partitions))
    require_fetchable(wanted, calendar, clock(), router.extended)
    report = IngestReport(timeframe, partitions=len(wanted))
    report.bars_expected = _expected_total(wanted, timeframe, calendar, router.extended)
    wanted = _carry(wanted, committed, report, log)

    candidates = router.assign(wanted, timeframe, clock())
    errors: dict[Partition, list[str]] = defaultdict(list)
    refused: set[Partition] = set()  # answered, but not written: no bars, or fewer than stored
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
            # Planned requests, not API calls (pages and retries add calls; a synthetic source makes none).
            how = "generated locally, no API call" if provider.capabilities.synthetic else f"in {len(requests)} request(s)"
            log(f"{provider.name}: {len(assigned)} partition(s) of {timeframe.value} {how}")
            for request in requests:
                outcome = _fetch_and_store(
                    request, provider, router, store, report, clock, run_id, log, allow_fewer, rewrite_reason,
                    split_ratio,
                )
                refused.update(outcome.refused)
                for partition, error in outcome.failed.items():
                    errors[partition].append(error)
                    candidates[partition].pop(0)
                    if candidates[partition]:
                        pending.append(partition)

    done = set(report.written) | set(report.kept)
    report.failures = {p: " | then ".join(errors[p]) for p in wanted if p not in done}
    notes = {p: e for p, e in report.failures.items() if p in refused}
    failed = {p: e for p, e in report.failures.items() if p not in refused}
    report.empty = set(notes)
    expected = _expected_by_session(report.failures, timeframe, calendar, router.extended)
    if notes:
        store.record_refusals(timeframe, notes, expected=expected, at=clock(), run_id=run_id)
    if failed:
        store.record_failures(timeframe, failed, expected=expected, at=clock(), run_id=run_id)
    return report


def _carry(wanted: list[Partition], committed: Iterable[Partition], report: IngestReport, log: Log) -> list[Partition]:
    """Record the partitions an earlier attempt committed as carried; the rest is still to do."""
    done = set(committed)
    report.carried = [p for p in wanted if p in done]
    if report.carried:
        log(f"{len(report.carried)} partition(s) of {report.timeframe.value} were committed complete by an "
            f"earlier attempt of this run: not {'fetched' if report.timeframe.is_fetched else 'derived'} again")
    return [p for p in wanted if p not in done]


@dataclass
class _Outcome:
    failed: dict[Partition, str] = field(default_factory=dict)  # partition -> why, for the next provider
    refused: set[Partition] = field(default_factory=set)  # of those: an answer that was not written


def _fetch_and_store(
    request: FetchRequest,
    provider: Provider,
    router: Router,
    store: BarStore,
    report: IngestReport,
    clock: Clock,
    run_id: str | None,
    log: Log,
    allow_fewer: bool,
    rewrite_reason: str | None = None,
    split_ratio: Fraction | None = None,
) -> _Outcome:
    """Fetch one request, validate its bars and write the partitions they may replace."""
    calendar, timeframe = router.calendar, request.timeframe
    requested_at = clock()
    try:
        result = provider.fetch(request)
    except ProviderError as exc:
        log(f"request failed: {exc}")
        return _Outcome(failed={p: str(exc) for p in request.partitions})
    report.api_calls[provider.name] += result.api_calls
    as_of = requested_at if result.complete_through is None else min(requested_at, result.complete_through)
    checked = validate_bars(
        result.bars, timeframe, calendar, symbols=request.symbols, sessions=request.sessions,
        extended=router.extended, now=as_of,
    )
    report.outside_hours += checked.outside_hours
    if result.rejected is not None and len(result.rejected):
        checked = checked.with_rejected(result.rejected)
    bad = _tainted(checked, request, provider.provenance)
    if bad:
        report.rejected_bars += store.quarantine(
            checked.rejected, timeframe, provider=provider.provenance, at=requested_at, run_id=run_id
        )
    for symbol, why in result.unserved.items():
        for session in request.sessions:
            bad.setdefault((symbol, session), f"{provider.name} did not serve {symbol}: {why}")
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
            session_closed=calendar.has_closed(d, as_of, router.extended),
        )
        for s, d in good
    ]
    written = store.replace_partitions(
        timeframe, valid, coverage, provider=provider.provenance,
        adjustment=router.adjustment.value, fetched_at=requested_at, run_id=run_id, allow_fewer=allow_fewer,
        rewrite_reason=rewrite_reason, split_ratio=split_ratio,
    )
    report.bars_written += written.bars
    report.written.extend(written.written)
    report.kept.extend(written.kept())
    if written.written:
        report.served_by[provider.provenance] += len(written.written)
    outcome = _Outcome(failed=dict(bad))
    for partition, decision in written.refused().items():
        outcome.failed[partition] = refusal_note(
            decision, provider.provenance, counts.get(partition, 0), written.stored.get(partition),
            unexplained=written.unexplained.get(partition),
        )
        outcome.refused.add(partition)
    if outcome.refused:
        log(f"{provider.name}: {len(outcome.refused)} partition(s) answered worse than stored (kept): "
            f"{next(iter(outcome.failed[p] for p in outcome.refused))}")
    return outcome


def _tainted(checked: Validation, request: FetchRequest, provider: str) -> dict[Partition, str]:
    """Partitions of the request that a rejected bar makes untrustworthy, with the reason naming
    the `provider` that sent it.

    A rejected bar taints its own partition; one that cannot be placed in a requested session (an
    answer for other dates) taints its symbol's partitions in the request; one for a symbol never
    requested taints them all. So a wrong answer fails its partitions, never passes as "no bars".
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
            f"{provider} returned {len(rows)} invalid bar(s) (kept in rejected_bars), "
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
    rewrite_reason: str | None = None,
    committed: Iterable[Partition] = (),
) -> IngestReport:
    """Resample stored m15 bars into h1/h4 for the given partitions and store them
    (`rewrite_reason`, `committed`: as for `fetch_partitions`)."""
    source = timeframe.source
    if source is None:
        raise ValueError(f"{timeframe.value} is fetched, not derived")
    calendar = store.calendar
    wanted = sorted(set(partitions))
    require_fetchable(wanted, calendar, clock(), extended)
    report = IngestReport(timeframe, partitions=len(wanted))
    report.bars_expected = _expected_total(wanted, timeframe, calendar, extended)
    wanted = _carry(wanted, committed, report, log)

    for chunk in derive_chunks(wanted):
        _derive_chunk(chunk, timeframe, store, extended, clock, run_id, report, rewrite_reason)
    # Partitions recorded `empty` after their m15 keep that row: only the others are failed.
    failed = {p: e for p, e in report.failures.items() if p not in report.empty}
    if failed:
        store.record_failures(
            timeframe, failed, expected=_expected_by_session(failed, timeframe, calendar, extended),
            at=clock(), run_id=run_id,
        )
    log(f"derived {timeframe.value} for {len(report.written)} partition(s), {report.bars_written} bar(s)")
    return report


def derive_chunks(
    wanted: Sequence[Partition], max_symbols: int | None = None, max_partitions: int | None = None
) -> list[list[Partition]]:
    """Sorted partitions cut into consecutive chunks of at most `max_symbols` symbols and
    `max_partitions` partitions (DERIVE_SYMBOLS_PER_CHUNK, DERIVE_PARTITIONS_PER_CHUNK; a
    symbol's sessions may span chunks)."""
    max_symbols = max_symbols or DERIVE_SYMBOLS_PER_CHUNK
    max_partitions = max_partitions or DERIVE_PARTITIONS_PER_CHUNK
    chunks: list[list[Partition]] = []
    chunk: list[Partition] = []
    symbols: set[str] = set()
    for partition in wanted:
        if chunk and (len(chunk) >= max_partitions or (partition[0] not in symbols and len(symbols) >= max_symbols)):
            chunks.append(chunk)
            chunk, symbols = [], set()
        chunk.append(partition)
        symbols.add(partition[0])
    if chunk:
        chunks.append(chunk)
    return chunks


def _derive_chunk(
    chunk: Sequence[Partition],
    timeframe: Timeframe,
    store: BarStore,
    extended: bool,
    clock: Clock,
    run_id: str | None,
    report: IngestReport,
    rewrite_reason: str | None = None,
) -> None:
    """Derive one chunk of partitions in one transaction that holds m15 still (BarStore.derivation):
    the h1/h4 written are the resample of exactly the m15 stored, and record which m15 fetch."""
    source = timeframe.source
    symbols = sorted({s for s, _ in chunk})
    with store.derivation(source, timeframe, symbols) as tx:
        sessions = [d for _, d in chunk]
        ledger = tx.source_ledger(symbols, (min(sessions), max(sessions)))  # the chunk's sessions, not the symbols' history
        status = {(r.symbol, r.session): r for r in ledger.itertuples(index=False)}
        ready = []
        for partition in chunk:
            row = status.get(partition)
            if row is None or row.status == LedgerStatus.FAILED:
                state = "never fetched" if row is None else f"failed: {row.error}"
                report.failures[partition] = (
                    f"cannot derive {timeframe.value}: its {source.value} partition is {state}; "
                    f"materialize {source.asset_name} for it first"
                )
            else:
                ready.append(partition)
        if ready:
            _derive_ready(tx, ready, status, timeframe, store.calendar, extended, clock, run_id, report, rewrite_reason)


def _derive_ready(
    tx: Derivation,
    ready: Sequence[Partition],
    status: dict,
    timeframe: Timeframe,
    calendar: SessionCalendar,
    extended: bool,
    clock: Clock,
    run_id: str | None,
    report: IngestReport,
    rewrite_reason: str | None = None,
) -> None:
    m15 = tx.read_source(ready)
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
        row = status[partition]
        stored_by = row.provider if isinstance(row.provider, str) else None  # None (NaN): m15 empty
        label = f"resample:{source_provider.get(partition) or stored_by or 'none'}"
        groups[label].append(
            CoverageEntry(
                symbol=symbol,
                session=session,
                bars=counts.get(partition, 0),
                expected=expected[session],
                # Derived bars are exactly as final as the m15 bars they come from.
                session_closed=bool(row.session_closed),
                source_fetched_at=None if pd.isna(row.fetched_at) else pd.Timestamp(row.fetched_at).to_pydatetime(),
            )
        )
    hollow = _hollow([p for p in ready if p not in bad], status, counts)
    adjustment = m15["adjustment"].iloc[0] if len(m15) else "split"
    keys = pd.MultiIndex.from_arrays([valid["symbol"], valid["session"]])
    for label, entries in groups.items():
        members = [(e.symbol, e.session) for e in entries]
        result = tx.replace(valid[keys.isin(members)], entries, provider=label, adjustment=adjustment,
                            fetched_at=now, run_id=run_id, rewrite_reason=rewrite_reason)
        report.bars_written += result.bars
        shown = [p for p in result.written if p not in hollow]
        report.written.extend(shown)
        if shown:
            report.served_by[label] += len(shown)
    for partition in sorted(hollow):
        row = status[partition]
        why = f": {row.error}" if isinstance(row.error, str) and row.error else ""
        report.failures[partition] = (
            f"cannot derive {timeframe.value}: its {Timeframe.M15.value} partition holds no bars "
            f"({row.status}{why})"
        )
        report.empty.add(partition)


def _hollow(ready: Sequence[Partition], status: dict, counts: Counter) -> set[Partition]:
    """Derived partitions of a closed session whose m15 holds no bars. Their rows are written
    `empty`, following m15 (so the sweep derives them again only once m15 changes), but they are
    not materialized: the step fails naming them, as m15's own step did, instead of showing them
    green with no bars."""
    return {
        p for p in ready
        if not counts.get(p, 0) and not int(status[p].bars) and bool(status[p].session_closed)
    }


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

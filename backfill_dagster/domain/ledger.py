"""The coverage ledger's statuses, and the rule that decides whether an answer may replace stored bars.

`complete` is a promise: the partition holds every bar its provider will serve. So a row says
`complete` only for an answer given after the session had closed (as of the provider's own data
cut-off) that held bars; an answer without any bars for a closed session is `empty`, never
`complete`; and a worse answer never replaces a better stored one — a final answer with fewer
bars than final stored ones, an answer with no bars, or a provisional answer over final bars is
not written (the operator may allow fewer bars, e.g. to re-pull history after a split).
Pure: plain values in, a decision out; the store applies it inside the write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

# A (symbol, session) partition: the unit the ledger covers, a run fills and the checks judge.
Partition = tuple[str, date]

# How an operator lets fewer bars replace final ones: a run tag (UI backfill, CLI) or the setting.
REPLACE_FEWER_TAG = "backfill/replace_fewer_bars"
REPLACE_FEWER_SETTING = "BACKFILL_REPLACE_FEWER_BARS"
# A split repair's runs: the split's ratio (new:old, "1:10"). A final answer with fewer bars replaces
# final stored ones only when the split's new share basis explains every bar it lacks
# (domain/split_basis.py: a bar whose volume falls under one share); any other is refused.
SPLIT_RATIO_TAG = "backfill/split_ratio"
# Why a run rewrites partitions on purpose (e.g. a split repair): recorded in bar_coverage.rewrite_reason.
REWRITE_REASON_TAG = "backfill/rewrite_reason"


class LedgerStatus(StrEnum):
    COMPLETE = "complete"  # fetched after the session closed, with bars: final
    PARTIAL = "partial"  # fetched while the session was open (or before the provider's data was final)
    EMPTY = "empty"  # every provider answered without bars for the closed session
    FAILED = "failed"  # the last attempt failed; bars from an earlier success are kept


LEDGER_STATUSES = tuple(s.value for s in LedgerStatus)


@dataclass(frozen=True)
class Stored:
    """What the ledger says a partition holds now."""

    bars: int
    final: bool  # those bars came from an answer given after the session closed


class Decision(StrEnum):
    WRITE = "write"
    EMPTY = "empty"  # a final answer without bars: nothing written, try another provider
    FEWER = "fewer"  # a final answer with fewer bars than the final stored ones: kept the stored
    KEEP = "keep"  # a provisional answer no better than what is stored: kept, nothing to do

    @property
    def refused(self) -> bool:
        """An answer that was not written and leaves the partition unserved."""
        return self in (Decision.EMPTY, Decision.FEWER)


def holds_final_bars(stored: Stored | None) -> bool:
    """The `complete` rule: a partition whose stored bars came from a final answer, and are some,
    holds every bar its provider will serve. Such a row stays `complete` whatever later attempt is
    recorded over it (store/ledger_rule.py is this rule in SQL; a test keeps the two equal)."""
    return stored is not None and stored.final and stored.bars > 0


def status_recorded(stored: Stored | None, attempted: LedgerStatus) -> LedgerStatus:
    """The status a ledger row gets when an attempt that wrote no bars (`attempted`: empty, failed)
    is recorded over what is stored."""
    return LedgerStatus.COMPLETE if holds_final_bars(stored) else attempted


def judge(stored: Stored | None, offered: int, final: bool, *, allow_fewer: bool = False) -> Decision:
    """Whether an answer of `offered` bars (`final`: given after the session closed) may replace
    what is stored. `allow_fewer` lets a final answer with fewer (but some) bars replace final ones."""
    have = stored.bars if stored is not None else 0
    have_final = holds_final_bars(stored)
    if final:
        if offered == 0:
            return Decision.EMPTY
        if have_final and offered < have and not allow_fewer:
            return Decision.FEWER
        return Decision.WRITE
    if have_final:
        return Decision.KEEP
    if offered < have and not allow_fewer:
        return Decision.KEEP
    return Decision.WRITE


def refusal_note(
    decision: Decision, provider: str, offered: int, stored: Stored | None, *, unexplained: str | None = None
) -> str:
    """Why an answer was not written, for the ledger's error and the step's failure message.
    `unexplained`: in a split repair, why the split does not explain the missing bars."""
    have = stored.bars if stored is not None else 0
    if decision is Decision.EMPTY:
        kept = f"; kept the {have} stored bar(s)" if have else ""
        return f"{provider} answered no bars for this closed session{kept}"
    if decision is Decision.FEWER and unexplained:
        return (
            f"{provider} answered {offered} bar(s), fewer than the {have} stored from an earlier final "
            f"answer, and {unexplained}: kept them"
        )
    if decision is Decision.FEWER:
        return (
            f"{provider} answered {offered} bar(s), fewer than the {have} stored from an earlier final "
            f"answer: kept them (to replace them, run with the tag {REPLACE_FEWER_TAG}=true or set "
            f"{REPLACE_FEWER_SETTING}=true)"
        )
    raise ValueError(f"{decision} is not a refusal")

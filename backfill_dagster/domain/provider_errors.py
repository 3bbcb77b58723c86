"""How a provider's request fails: after the client's retries, refused by its shared budget, or
unavailable until a time it named. Providers raise these, the store's shared budget raises the
budget's two, and the use case reads them to fall back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Described(Protocol):
    """What an error says it was asked for (a providers.base.FetchRequest)."""

    def describe(self) -> str: ...


class ProviderError(Exception):
    """A request that failed after the client's retries. Never carries credentials."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        request: Described | None = None,
        retryable: bool = False,
    ):
        self.provider = provider
        self.status = status
        self.request = request
        self.retryable = retryable
        where = f" for {request.describe()}" if request else ""
        code = f" (last HTTP status {status})" if status is not None else ""
        super().__init__(f"{provider}{where}: {message}{code}")


@dataclass(frozen=True)
class Unavailability:
    """Until when a provider refuses to serve (UTC), and why, in the server's words."""

    until: datetime
    reason: str  # e.g. "HTTP 429 with Retry-After 3600 s: quota exhausted"


def utc_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


class ProviderUnavailable(ProviderError):
    """The provider asked for a longer wait than a retry may take: its requests fail at once, not
    retried, until `until`, in every process sharing its budget (the router falls back meanwhile)."""

    def __init__(
        self,
        provider: str,
        unavailability: Unavailability,
        *,
        sent: bool,
        status: int | None = None,
        request: Described | None = None,
    ):
        self.unavailability = unavailability
        self.sent = sent  # False: refused by the budget, nothing went out
        tail = "" if sent else "; not sent"
        super().__init__(
            provider,
            f"unavailable until {utc_text(unavailability.until)}: {unavailability.reason}{tail}",
            status=status,
            request=request,
            retryable=False,
        )

    @property
    def until(self) -> datetime:
        return self.unavailability.until

    def for_request(self, request: Described | None) -> ProviderUnavailable:
        return ProviderUnavailable(
            self.provider, self.unavailability, sent=self.sent, status=self.status, request=request
        )


class BudgetWaitExceeded(ProviderError):
    """A request waited for its provider's shared budget as long as it may; nothing was sent."""

    def __init__(self, provider: str, detail: str, *, request: Described | None = None):
        self.detail = detail
        super().__init__(provider, detail, request=request, retryable=True)

    def for_request(self, request: Described | None) -> BudgetWaitExceeded:
        return BudgetWaitExceeded(self.provider, self.detail, request=request)

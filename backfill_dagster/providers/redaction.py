"""Secrets never leave: blank credential values and secret-looking query parameters in any text,
including httpx's own request log lines."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

# Query parameters whose values are secrets wherever they appear (Polygon's apiKey, OAuth tokens...).
_SECRET_PARAM = re.compile(
    r"(?i)\b(api[_-]?key|apikey|access[_-]?token|token|secret|key|password|signature)=([^&\s\"'#]+)"
)
# Authorization-like header values written out in text.
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "***"


def redact_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every secret value and secret-looking query parameter blanked.

    A server may echo a key as it was sent or as it appeared in a URL: percent-encoded (either
    case of hex digits, '+' for spaces) or JSON-escaped ('\\/'); each of those forms is blanked too.
    Cut a text to length only after redacting it, or the cut may leave a secret's first characters."""
    forms = {form for secret in secrets if secret for form in _spellings(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _spellings(secret: str) -> set[str]:
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    lower = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), e) for e in encoded}
    return {secret, secret.replace("/", "\\/"), *encoded, *lower}


class _RedactingFilter(logging.Filter):
    """Blanks secret-looking query parameters in httpx's own "HTTP Request: GET <url>" lines.

    Our clients never put a key in a URL; this guards the day someone configures one that does.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_secrets(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_FILTER = _RedactingFilter()


def redact_library_logs() -> None:
    """Install the filter on httpx's and httpcore's loggers (once)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

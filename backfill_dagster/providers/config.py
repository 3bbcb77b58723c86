"""A provider's settings, read from configuration by environment variable name.

Errors name the variable and the fix, never its value: a key is a secret, and a URL may embed one.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from backfill_dagster.providers.base import ProviderConfigError


def setting_url(config: Mapping[str, str | None], name: str, default: str) -> str:
    """A provider's base URL from its setting: http(s), a host, no query; trailing '/' dropped.

    Errors name the setting, never its value (a URL may embed credentials).
    """
    value = (config.get(name) or "").strip() or default
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        raise ProviderConfigError(f"{name} is not a valid URL: use e.g. {default}") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ProviderConfigError(
            f"{name} is not a valid base URL (need http(s)://host[:port][/path], no query): use e.g. {default}"
        )
    if url.userinfo:
        raise ProviderConfigError(f"{name} must not embed credentials: set the key variables instead")
    return value.rstrip("/")


def setting_secret(config: Mapping[str, str | None], name: str, provider: str) -> str:
    """A required credential; the error names the variable, never a value."""
    value = (config.get(name) or "").strip()
    if not value:
        raise ProviderConfigError(
            f"provider {provider!r} needs {name}: set it in the environment, or remove {provider!r} "
            "from BACKFILL_PROVIDERS"
        )
    return value

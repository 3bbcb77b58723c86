"""Deployment settings, read from the environment when definitions load (never at import).

| variable                  | default                                   | meaning                                  |
|---------------------------|-------------------------------------------|------------------------------------------|
| BACKFILL_DATABASE_URL     | sqlite:///<data dir>/backfill.sqlite      | the store (postgresql://... in production)|
| BACKFILL_DATA_DIR         | <project>/data                            | embedded database, demo Dagster home     |
| BACKFILL_HISTORY_START    | 2024-01-01                                | first date of the session partitions     |
| BACKFILL_EXTENDED_HOURS   | false                                     | include 04:00-09:30 and post-close bars   |
| BACKFILL_PROVIDERS        | demo                                      | providers in order of preference         |
| BACKFILL_ADJUSTMENT       | split                                     | split-adjusted or raw prices, store-wide |
| BACKFILL_COMPLETENESS_WARN_BELOW | 0.9                                | m15 completeness check warns below this  |
| BACKFILL_REPLACE_FEWER_BARS | false                                   | final answers with fewer bars may replace final stored ones |
| <PROVIDER>_RATE_LIMIT     | alpaca 200, polygon 5, tradier 120, yahoo 60 | requests per window, shared (0: none) |
| BACKFILL_RATE_WINDOW_SECONDS | 60                                     | the rate limits' window                  |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from backfill_dagster.domain.calendar import CALENDAR_FIRST_DAY
from backfill_dagster.providers.base import Adjustment
from backfill_dagster.providers.ratelimit import DEFAULT_RATE_LIMITS, DEFAULT_WINDOW_S

DEFAULT_HISTORY_START = date(2024, 1, 1)
DEFAULT_PROVIDERS = ("demo",)


class SettingsError(ValueError):
    """A setting with a value that cannot be used."""


def project_root() -> Path | None:
    """The source checkout this package runs from, if it does (editable install or cwd)."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "backfill_dagster").is_dir():
        return here
    return None


def default_data_dir() -> Path:
    root = project_root()
    return (root if root else Path.cwd()) / "data"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None  # None: the embedded SQLite file in data_dir
    history_start: date = DEFAULT_HISTORY_START
    extended_hours: bool = False
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    adjustment: Adjustment = Adjustment.SPLIT
    completeness_warn_below: float = 0.9
    replace_fewer_bars: bool = False
    rate_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    rate_window_s: float = DEFAULT_WINDOW_S

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'backfill.sqlite'}"

    @property
    def dagster_home(self) -> Path:
        """The embedded Dagster instance's home when DAGSTER_HOME is not set."""
        return self.data_dir / "dagster_home"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env["BACKFILL_DATA_DIR"]).expanduser() if env.get("BACKFILL_DATA_DIR") else default_data_dir()
        return cls(
            data_dir=data_dir.resolve(),
            database_url=env.get("BACKFILL_DATABASE_URL") or None,
            history_start=_date(env, "BACKFILL_HISTORY_START", DEFAULT_HISTORY_START),
            extended_hours=_bool(env, "BACKFILL_EXTENDED_HOURS", False),
            providers=_names(env, "BACKFILL_PROVIDERS", DEFAULT_PROVIDERS),
            adjustment=_adjustment(env),
            completeness_warn_below=_ratio(env, "BACKFILL_COMPLETENESS_WARN_BELOW", 0.9),
            replace_fewer_bars=_bool(env, "BACKFILL_REPLACE_FEWER_BARS", False),
            rate_limits={
                name: _count(env, f"{name.upper()}_RATE_LIMIT", default)
                for name, default in DEFAULT_RATE_LIMITS.items()
            },
            rate_window_s=_seconds(env, "BACKFILL_RATE_WINDOW_SECONDS", DEFAULT_WINDOW_S),
        )


def _date(env: Mapping[str, str], name: str, default: date) -> date:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = date.fromisoformat(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a date: use YYYY-MM-DD") from None
    if value < CALENDAR_FIRST_DAY:
        raise SettingsError(f"{name}={raw!r} is before {CALENDAR_FIRST_DAY}, the calendar's first day")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean: use true or false")


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if not raw or not raw.strip():
        return default
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    if not names:
        raise SettingsError(f"{name}={raw!r} names no provider: use e.g. 'alpaca,polygon,demo'")
    return names


def _adjustment(env: Mapping[str, str]) -> Adjustment:
    raw = env.get("BACKFILL_ADJUSTMENT")
    if not raw:
        return Adjustment.SPLIT
    try:
        return Adjustment.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"BACKFILL_ADJUSTMENT: {exc}") from None


def _number(env: Mapping[str, str], name: str, default, convert, is_valid, what: str, rule: str):
    """A numeric setting: `default` when unset, else `convert(raw)` if it parses and `is_valid`."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not is_valid(value):
        raise SettingsError(f"{name}={raw!r} {rule}")
    return value


def _ratio(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, lambda v: 0.0 <= v <= 1.0,
                   "a number: use a ratio such as 0.9", "must be between 0 and 1")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, lambda v: v >= 0,
                   "a whole number of requests (0 = unlimited)", "cannot be negative (0 = unlimited)")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, lambda v: v > 0,
                   "a number of seconds", "must be more than 0 seconds")

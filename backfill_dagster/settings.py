"""Deployment settings: every environment variable the project reads, read here, once, when the
definitions load (never at import), with one numeric parser and one error style. The README's
"Configuration" table lists them all (tests/test_settings.py keeps the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from backfill_dagster.domain.calendar import CALENDAR_FIRST_DAY, NEW_YORK
from backfill_dagster.domain.gap_policy import DEFAULT_HISTORY_DAYS, GapPolicy, GapPolicyError
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment
from backfill_dagster.providers.ratelimit import DEFAULT_RATE_LIMITS, DEFAULT_WINDOW_S

DEFAULT_HISTORY_START = date(2024, 1, 1)
DEFAULT_PROVIDERS = ("demo",)
# The end_of_day schedule runs this long after each close (BACKFILL_EOD_DELAY_MINUTES, 0-180); the
# gap sensor leaves a closed session alone for as long and half an hour more, so the two never
# fetch it both.
DEFAULT_EOD_DELAY = timedelta(minutes=30)
MAX_EOD_DELAY = timedelta(hours=3)
# The HTTP client's retries (providers/http.py RetryPolicy) and a request's longest wait for its
# provider's shared budget (store/budget.py).
DEFAULT_HTTP_ATTEMPTS = 6
DEFAULT_HTTP_BACKOFF_S = 1.0
DEFAULT_RATE_MAX_WAIT_S = 600.0
# Every number is bounded when it loads, so a typo (an extra zero or six) stops the load naming the
# variable instead of overflowing a date or a timestamp at every sensor tick. The bounds are far
# beyond any sensible value: a century of history, a year of waiting.
MAX_GAP_DAYS = 36_525  # a century: more than any history (the calendar starts in 2000)
MAX_MINUTES = 366 * 24 * 60  # a year
MAX_COUNT = 10_000_000  # runs, partitions, requests: far beyond the whole market's 252,000
MAX_ATTEMPTS = 1_000
MAX_SECONDS = 24 * 3600.0  # a day: a rate window, a budget wait, a back-off

# The providers' variables (README, "Providers"): each one that is set reaches the providers
# resource as a Dagster EnvVar, so the UI and the run config show its name, never its value.
PROVIDER_ENV_VARS = (
    "ALPACA_API_KEY", "ALPACA_API_SECRET", "ALPACA_DATA_URL", "ALPACA_FEED",
    "POLYGON_API_KEY", "POLYGON_API_URL", "POLYGON_HISTORY_DAYS",
    "TRADIER_API_TOKEN", "TRADIER_API_URL",
    "YAHOO_CHART_URL",
    "FLATFILES_ENDPOINT_URL", "FLATFILES_BUCKET", "FLATFILES_ACCESS_KEY_ID", "FLATFILES_SECRET_ACCESS_KEY",
    "FLATFILES_CACHE_DIR",
)
# Dagster's own variables the project reads or sets (cli.py, instance/event_log_tuning.py,
# instance/backfill_waits.py).
DAGSTER_ENV_VARS = ("DAGSTER_HOME", "DAGSTER_EVENT_BATCH_SIZE", "DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR")
# Read by the instance plug-ins in the daemon's process, not by Settings (instance/backfill_runs.py).
INSTANCE_ENV_VARS = ("BACKFILL_BOX_PARTITIONS", "BACKFILL_BOX_SHAPE")


def env_variables() -> tuple[str, ...]:
    """Every environment variable the project reads, as the README's configuration table lists them."""
    return (
        "BACKFILL_DATABASE_URL", "BACKFILL_DATA_DIR", "BACKFILL_HISTORY_START", "BACKFILL_EXTENDED_HOURS",
        "BACKFILL_PROVIDERS", "BACKFILL_ADJUSTMENT", "BACKFILL_COMPLETENESS_WARN_BELOW",
        "BACKFILL_REPLACE_FEWER_BARS",
        *(f"{name.upper()}_RATE_LIMIT" for name in DEFAULT_RATE_LIMITS),
        "BACKFILL_RATE_WINDOW_SECONDS", "BACKFILL_RATE_MAX_WAIT_SECONDS",
        "BACKFILL_HTTP_ATTEMPTS", "BACKFILL_HTTP_BACKOFF_SECONDS", "BACKFILL_EOD_DELAY_MINUTES",
        *(f"BACKFILL_GAP_DAYS_{t.value.upper()}" for t in Timeframe),
        *_GAP_COUNTS, *_GAP_MINUTES,
        *PROVIDER_ENV_VARS, *DAGSTER_ENV_VARS, *INSTANCE_ENV_VARS,
    )


# GapPolicy field -> its variable (whole numbers >= 1; minutes >= 0)
_GAP_COUNTS = {
    "BACKFILL_GAP_MAX_SESSIONS_PER_RUN": "max_sessions_per_run",
    "BACKFILL_GAP_MAX_PARTITIONS_PER_RUN": "max_partitions_per_run",
    "BACKFILL_GAP_MAX_RUNS_PER_TICK": "max_runs_per_tick",
    "BACKFILL_GAP_MAX_ASSET_PARTITIONS_PER_TICK": "max_asset_partitions_per_tick",
    "BACKFILL_GAP_MAX_RUNS_IN_FLIGHT": "max_runs_in_flight",
    "BACKFILL_GAP_EMPTY_ATTEMPTS": "empty_attempts",
}
_GAP_MINUTES = {
    "BACKFILL_GAP_SETTLE_MINUTES": "settle",
    "BACKFILL_GAP_RETRY_FAILED_MINUTES": "retry_failed_after",
    "BACKFILL_GAP_RETRY_EMPTY_MINUTES": "retry_empty_after",
}


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
    rate_max_wait_s: float = DEFAULT_RATE_MAX_WAIT_S
    http_attempts: int = DEFAULT_HTTP_ATTEMPTS
    http_backoff_s: float = DEFAULT_HTTP_BACKOFF_S
    end_of_day_delay: timedelta = DEFAULT_EOD_DELAY
    gap_policy: GapPolicy = field(default_factory=GapPolicy)

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
        end_of_day_delay = timedelta(minutes=_whole_number(
            env, "BACKFILL_EOD_DELAY_MINUTES", int(DEFAULT_EOD_DELAY.total_seconds() // 60), minimum=0,
            maximum=int(MAX_EOD_DELAY.total_seconds() // 60), rule="is out of range: the end-of-day delay must be between 0 and 180 minutes",
        ))
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
            rate_max_wait_s=_seconds(env, "BACKFILL_RATE_MAX_WAIT_SECONDS", DEFAULT_RATE_MAX_WAIT_S),
            http_attempts=_whole_number(env, "BACKFILL_HTTP_ATTEMPTS", DEFAULT_HTTP_ATTEMPTS, minimum=1,
                                        maximum=MAX_ATTEMPTS),
            http_backoff_s=_number(env, "BACKFILL_HTTP_BACKOFF_SECONDS", DEFAULT_HTTP_BACKOFF_S, float,
                                   lambda v: 0 <= v <= MAX_SECONDS, "a number of seconds",
                                   f"must be between 0 and {MAX_SECONDS:,.0f} seconds (a day)"),
            end_of_day_delay=end_of_day_delay,
            gap_policy=_gap_policy(env, end_of_day_delay),
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
    today = datetime.now(NEW_YORK).date()
    if value > today:
        # No session partition would exist, and every sensor and schedule would find nothing to do.
        raise SettingsError(
            f"{name}={raw!r} is in the future (today is {today.isoformat()} in New York): history must "
            f"start on a past date, e.g. {DEFAULT_HISTORY_START.isoformat()}"
        )
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
    return _number(env, name, default, int, lambda v: 0 <= v <= MAX_COUNT,
                   "a whole number of requests (0 = unlimited)",
                   f"cannot be negative (0 = unlimited) and must be at most {MAX_COUNT:,} requests")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, lambda v: 0 < v <= MAX_SECONDS,
                   "a number of seconds", f"must be more than 0 seconds and at most {MAX_SECONDS:,.0f} (a day)")


def _whole_number(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None,
           rule: str | None = None) -> int:
    """A whole-number setting, at least `minimum` (and at most `maximum`)."""
    if rule is None:
        most = "" if maximum is None else f" and at most {maximum:,}"
        rule = f"must be at least {minimum}{most} (default {default})"
    return _number(env, name, default, lambda raw: int(raw.strip()),
                   lambda v: v >= minimum and (maximum is None or v <= maximum),
                   f"a whole number (default {default})", rule)


def _gap_policy(env: Mapping[str, str], end_of_day_delay: timedelta) -> GapPolicy:
    """The gap sensor's policy; a closed session is left to the end_of_day schedule for its delay and
    half an hour more unless BACKFILL_GAP_SETTLE_MINUTES says otherwise."""
    defaults = GapPolicy()
    minutes = {
        name: _whole_number(env, name, int(getattr(defaults, attr).total_seconds() // 60), minimum=0,
                            maximum=MAX_MINUTES)
        for name, attr in _GAP_MINUTES.items() if name != "BACKFILL_GAP_SETTLE_MINUTES"
    }
    settle = _whole_number(env, "BACKFILL_GAP_SETTLE_MINUTES", int(end_of_day_delay.total_seconds() // 60) + 30,
                           minimum=0, maximum=MAX_MINUTES)
    try:
        return GapPolicy(
            history_days={
                t: _whole_number(env, f"BACKFILL_GAP_DAYS_{t.value.upper()}", DEFAULT_HISTORY_DAYS[t], minimum=1,
                                 maximum=MAX_GAP_DAYS)
                for t in Timeframe
            },
            **{attr: _whole_number(env, name, getattr(defaults, attr), minimum=1,
                                   maximum=MAX_ATTEMPTS if name == "BACKFILL_GAP_EMPTY_ATTEMPTS" else MAX_COUNT)
               for name, attr in _GAP_COUNTS.items()},
            settle=timedelta(minutes=settle),
            **{_GAP_MINUTES[name]: timedelta(minutes=value) for name, value in minutes.items()},
        )
    except GapPolicyError as exc:
        raise SettingsError(str(exc)) from None


def database_url_is_set(env: Mapping[str, str] | None = None) -> bool:
    """Whether BACKFILL_DATABASE_URL is set: then it reaches Dagster by name (it may hold a password)."""
    env = os.environ if env is None else env
    return bool(env.get("BACKFILL_DATABASE_URL"))


def provider_config(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The providers' settings by variable name, as their factories read them (values: secrets)."""
    env = os.environ if env is None else env
    return {name: env.get(name) for name in PROVIDER_ENV_VARS}


def provider_variables_set(env: Mapping[str, str] | None = None) -> list[str]:
    """The providers' variables that are set (names only)."""
    return [name for name, value in provider_config(env).items() if value]

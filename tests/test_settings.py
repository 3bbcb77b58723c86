"""Settings: every environment variable read once, in settings.py; errors name the variable."""

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest

from backfill_dagster.domain.gap_policy import GapPolicy
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.settings import DAGSTER_ENV_VARS, INSTANCE_ENV_VARS, Settings, SettingsError, env_variables, provider_config

M15, H1, H4, D1 = Timeframe.M15, Timeframe.H1, Timeframe.H4, Timeframe.D1


def gap_policy(env):
    return Settings.from_env(env).gap_policy


def test_the_gap_policy_comes_from_the_environment():
    loaded = gap_policy({"BACKFILL_GAP_DAYS_M15": "10", "BACKFILL_GAP_DAYS_D1": " 730 ",
                        "BACKFILL_GAP_MAX_RUNS_PER_TICK": "3", "BACKFILL_GAP_SETTLE_MINUTES": "0"})
    assert loaded.history_days == {M15: 10, H1: 90, H4: 90, D1: 730}
    assert loaded.max_runs_per_tick == 3 and loaded.settle == timedelta(0)
    assert gap_policy({}) == GapPolicy()
    # The sensor stays clear of the end_of_day schedule's delay, whatever it is set to.
    assert gap_policy({"BACKFILL_EOD_DELAY_MINUTES": "90"}).settle == timedelta(minutes=120)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"BACKFILL_GAP_DAYS_H1": "ninety"}, "BACKFILL_GAP_DAYS_H1='ninety' is not a whole number"),
        ({"BACKFILL_GAP_DAYS_H4": "0"}, "BACKFILL_GAP_DAYS_H4='0' must be at least 1"),
        ({"BACKFILL_GAP_MAX_RUNS_PER_TICK": "-2"}, "must be at least 1"),
    ],
)
def test_gap_policy_errors_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_end_of_day_delay():
    assert Settings.from_env({}).end_of_day_delay == timedelta(minutes=30)
    assert Settings.from_env({"BACKFILL_EOD_DELAY_MINUTES": "45"}).end_of_day_delay == timedelta(minutes=45)
    with pytest.raises(SettingsError, match="between 0 and 180 minutes"):
        Settings.from_env({"BACKFILL_EOD_DELAY_MINUTES": "600"})
    with pytest.raises(SettingsError, match="not a whole number"):
        Settings.from_env({"BACKFILL_EOD_DELAY_MINUTES": "soon"})


def test_http_and_budget_settings():
    settings = Settings.from_env({"BACKFILL_HTTP_ATTEMPTS": "3", "BACKFILL_HTTP_BACKOFF_SECONDS": "0.5",
                                  "BACKFILL_RATE_MAX_WAIT_SECONDS": "45"})
    assert (settings.http_attempts, settings.http_backoff_s, settings.rate_max_wait_s) == (3, 0.5, 45)
    for name, bad in [("BACKFILL_HTTP_ATTEMPTS", "0"), ("BACKFILL_HTTP_ATTEMPTS", "many"),
                      ("BACKFILL_HTTP_BACKOFF_SECONDS", "-1"), ("BACKFILL_HTTP_BACKOFF_SECONDS", "soon")]:
        with pytest.raises(SettingsError, match=f"{name}='{bad}'"):
            Settings.from_env({name: bad})


# ------------------------------------------------------------------------------------ the README's table
ROOT = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"^(BACKFILL|ALPACA|POLYGON|TRADIER|YAHOO|FLATFILES|DAGSTER)_[A-Z0-9_]*[A-Z0-9]$")  # not an f-string's prefix


def readme_table_rows(text: str) -> list[str]:
    """The variables named in the first column of the README's "Configuration" table, one entry
    per mention."""
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [n for line in section.splitlines() if line.startswith("| `")
            for n in re.findall(r"`([^`]+)`", line.split(" | ")[0]) if VARIABLE.match(n)]


def readme_table_variables(text: str) -> set[str]:
    return set(readme_table_rows(text))


def variables_named_in_code() -> set[str]:
    """Every string constant in the package that is a variable's name (what `os.environ`, `env.get`
    or `EnvVar` can be asked for); the per-provider and per-timeframe names are built from lists
    that `env_variables` expands the same way."""
    names = set()
    for path in (ROOT / "backfill_dagster").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.match(node.value):
                names.add(node.value)
    return names


class RecordingEnv(dict):
    def __init__(self):
        super().__init__()
        self.asked = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)


def test_the_readme_table_lists_every_variable_the_code_reads_and_no_other():
    listed = readme_table_variables((ROOT / "README.md").read_text())
    catalogue = set(env_variables())
    assert listed - catalogue == set(), "in the README's table, but no code reads it"
    assert catalogue - listed == set(), "read by the code, missing from the README's table"
    assert variables_named_in_code() - catalogue == set(), "named in the code: add it to settings.env_variables"
    env = RecordingEnv()
    Settings.from_env(env)
    provider_config(env)
    assert env.asked == catalogue - set(DAGSTER_ENV_VARS) - set(INSTANCE_ENV_VARS), (
        "settings.py reads these differently from its catalogue")
    from backfill_dagster.instance.backfill_runs import BOX_PARTITIONS_VARIABLE, BOX_SHAPE_VARIABLE

    assert INSTANCE_ENV_VARS == (BOX_PARTITIONS_VARIABLE, BOX_SHAPE_VARIABLE)


def test_the_readme_table_lists_each_variable_once():
    rows = readme_table_rows((ROOT / "README.md").read_text())
    assert sorted(n for n in set(rows) if rows.count(n) > 1) == []


def test_the_table_check_sees_a_missing_row():
    text = (ROOT / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `BACKFILL_EOD_DELAY_MINUTES`"))
    assert "BACKFILL_EOD_DELAY_MINUTES" not in readme_table_variables(text.replace(row + "\n", ""))


# Every numeric variable, with a value of the typo kind (six zeros too many): each is refused at
# load, naming the variable, instead of loading and failing later (an OverflowError every tick).
NUMERIC = [
    *(f"BACKFILL_GAP_DAYS_{t.value.upper()}" for t in Timeframe),
    "BACKFILL_GAP_MAX_SESSIONS_PER_RUN", "BACKFILL_GAP_MAX_PARTITIONS_PER_RUN", "BACKFILL_GAP_MAX_RUNS_PER_TICK",
    "BACKFILL_GAP_MAX_ASSET_PARTITIONS_PER_TICK", "BACKFILL_GAP_MAX_RUNS_IN_FLIGHT", "BACKFILL_GAP_EMPTY_ATTEMPTS",
    "BACKFILL_GAP_SETTLE_MINUTES", "BACKFILL_GAP_RETRY_FAILED_MINUTES", "BACKFILL_GAP_RETRY_EMPTY_MINUTES",
    "BACKFILL_EOD_DELAY_MINUTES", "BACKFILL_HTTP_ATTEMPTS", "BACKFILL_HTTP_BACKOFF_SECONDS",
    "ALPACA_RATE_LIMIT", "POLYGON_RATE_LIMIT", "TRADIER_RATE_LIMIT", "YAHOO_RATE_LIMIT",
    "BACKFILL_RATE_WINDOW_SECONDS", "BACKFILL_RATE_MAX_WAIT_SECONDS",
]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_number_is_bounded_when_it_loads(name):
    with pytest.raises(SettingsError, match=f"{name}='100000000000' .*(at most|between)") as raised:
        Settings.from_env({name: "100000000000"})
    assert "100000000000" in str(raised.value)


def test_the_largest_gap_days_load_and_a_tick_can_use_them():
    """BACKFILL_GAP_DAYS_D1=1000000 loaded, then every tick raised OverflowError computing its horizon."""
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.domain.gap_policy import horizons
    from tests.conftest import utc

    with pytest.raises(SettingsError, match="BACKFILL_GAP_DAYS_D1='1000000' must be at least 1 and at most 36,525"):
        Settings.from_env({"BACKFILL_GAP_DAYS_D1": "1000000"})
    most_days, most_minutes = 36_525, 366 * 24 * 60  # the bounds, as the README states them
    env = {f"BACKFILL_GAP_DAYS_{t.value.upper()}": str(most_days) for t in Timeframe}
    env |= {name: str(most_minutes) for name in ("BACKFILL_GAP_SETTLE_MINUTES", "BACKFILL_GAP_RETRY_FAILED_MINUTES",
                                                 "BACKFILL_GAP_RETRY_EMPTY_MINUTES")}
    settings = Settings.from_env(env)
    wanted = horizons(settings.gap_policy, xnys(), utc("2026-12-07 15:00"), settings.history_start)
    assert wanted[Timeframe.D1][0] == xnys().sessions(settings.history_start, "2024-01-10")[0]


def test_a_history_start_in_the_future_is_refused():
    with pytest.raises(SettingsError, match="BACKFILL_HISTORY_START='2099-01-01' is in the future"):
        Settings.from_env({"BACKFILL_HISTORY_START": "2099-01-01"})
    assert Settings.from_env({"BACKFILL_HISTORY_START": "2020-01-02"}).history_start.isoformat() == "2020-01-02"

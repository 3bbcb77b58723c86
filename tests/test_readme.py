"""The README's quickstart stays two commands, and CI runs the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_is_two_commands_run_and_test():
    run, test = quickstart_commands()
    assert "\n" not in run and "\n" not in test
    assert run.endswith("backfill-dagster demo")
    assert test.endswith("pytest")


def test_ci_runs_the_readme_test_command():
    _, test = quickstart_commands()
    assert test in (ROOT / ".ci" / "run").read_text()

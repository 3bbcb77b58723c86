"""The README's quickstart stays two commands, CI runs the README's test command verbatim, and the
Layout lists the tree."""

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


def layout_entries(readme: str) -> set[str]:
    """The paths the README's "Layout" lists under backfill_dagster/, from their indentation."""
    block = readme.split("\n## Layout\n", 1)[1].split("```\n", 2)[1]
    entries, stack = set(), []
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name:
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        stack[depth:] = [name]
        path = "".join(stack)
        if path.startswith("backfill_dagster/") and path != "backfill_dagster/":
            entries.add(path)
    return entries


def test_the_layout_lists_every_module_and_folder_of_the_package_and_no_other():
    listed = layout_entries((ROOT / "README.md").read_text())
    package = ROOT / "backfill_dagster"
    actual = {f"backfill_dagster/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
              if p.name != "__init__.py" and "__pycache__" not in p.parts}
    actual |= {f"backfill_dagster/{p.relative_to(package).as_posix()}/" for p in package.iterdir()
               if p.is_dir() and (p / "__init__.py").is_file()}
    assert listed - actual == set(), "listed in the README's Layout, but not in the tree"
    assert actual - listed == set(), "in the tree, missing from the README's Layout"

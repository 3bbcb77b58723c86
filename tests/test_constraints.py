"""constraints.txt is the lock the quickstart, CI and the image install from: it pins, exactly, every
distribution the project (with its test extra) depends on, agrees with pyproject.toml's exact pins,
and is what this environment runs (a fresh `pip install -c constraints.txt -e '.[test]'`)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def constraints() -> dict[str, str]:
    """The lock's pins by canonical name; every line is a comment or `name==version`."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"constraints.txt: {line!r} is not name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dependency_closure(requirements: list[str], extras: tuple[str, ...] = ()) -> dict[str, str]:
    """Every installed distribution `requirements` pull in, transitively (markers evaluated here,
    each distribution's own extras followed): canonical name -> installed version."""
    found: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        requirement, parent_extras = todo.pop()
        environments = [{"extra": e} for e in parent_extras] or [{"extra": ""}]
        if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            raise AssertionError(f"{requirement} is required but not installed") from None
        found[name] = dist.version
        todo.extend((Requirement(r), tuple(requirement.extras)) for r in dist.requires or [])
    return found


def test_every_line_is_an_exact_pin_and_the_project_itself_is_not_locked():
    pins = constraints()
    assert len(pins) > 20
    assert "backfill-dagster" not in pins  # an editable install of the checkout: never pinned


def test_the_lock_pins_every_distribution_the_project_and_its_tests_depend_on():
    project = pyproject()
    needed = dependency_closure(project["dependencies"] + project["optional-dependencies"]["test"])
    pins = constraints()
    assert sorted(set(needed) - set(pins)) == [], "installed dependencies constraints.txt does not pin: run `bash .ci/lock`"
    # and this environment is the lock's: what a fresh install from it gives (CI installs that way)
    differing = {name: (version, pins[name]) for name, version in needed.items() if version != pins[name]}
    assert differing == {}, ("installed (left) differs from constraints.txt (right): reinstall with "
                             "`pip install -c constraints.txt -e '.[test]'`, or regenerate the lock with `bash .ci/lock`")


def test_the_lock_agrees_with_pyproject_s_exact_pins_and_bounds():
    pins = constraints()
    project = pyproject()
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a direct dependency but constraints.txt does not pin it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}")
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        assert exact in ([], [pins[name]]), f"pyproject pins {name}=={exact[0]}, constraints.txt {pins[name]}"


def test_quickstart_ci_and_lock_script_install_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    installs = re.findall(r"pip install [^&\n]*", quickstart)
    assert len(installs) == 2 and all("-c constraints.txt" in i for i in installs), installs
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e '.[test]'" in ci
    # the lock script resolves without the old lock, and writes the file this test reads
    lock = (ROOT / ".ci" / "lock").read_text()
    assert '"$scratch/venv/bin/pip" install -q -e \'.[test]\'' in lock
    assert "mv constraints.txt.new constraints.txt" in lock

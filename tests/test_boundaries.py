"""The import boundaries of the layout (docs/design.md, "Layout and boundaries"), read from every module's imports with `ast`.

- the pure domain (domain/) imports neither Dagster nor the store (nor SQL) nor the providers:
  nothing of the package outside domain/;
- providers/ imports nothing from store/, orchestration/, instance/ or ingest;
- store/ imports nothing from providers/, orchestration/, instance/ or ingest;
- instance/ (the Dagster instance plug-ins) imports nothing from orchestration/;
- nothing imports a private name (`_name`) of another package, nor reads one off a module of
  another package.
Lazy imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "backfill_dagster"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# importer's package -> what it may not import (module prefixes, dotted)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "domain": ("dagster", "dagster_postgres", "sqlalchemy", "psycopg", "psycopg2", "httpx", PACKAGE),
    "providers": (f"{PACKAGE}.store", f"{PACKAGE}.orchestration", f"{PACKAGE}.instance", f"{PACKAGE}.ingest",
                  "dagster", "sqlalchemy"),
    "store": (f"{PACKAGE}.providers", f"{PACKAGE}.orchestration", f"{PACKAGE}.instance", f"{PACKAGE}.ingest",
              "dagster"),
    "instance": (f"{PACKAGE}.orchestration",),
}
# ... except these, which it may (the domain imports the domain)
ALLOWED: dict[str, tuple[str, ...]] = {"domain": (f"{PACKAGE}.domain",)}


@dataclass(frozen=True)
class Import:
    module: str  # dotted, absolute
    names: tuple[str, ...]  # names taken from it (`from m import a, b`); () for `import m`
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """`backfill_dagster.store.bars` -> `store`; a module at the package root is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(tree: ast.AST, module: str, is_package: bool) -> list[Import]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, target] if target else base)
            found.append(Import(target, tuple(alias.name for alias in node.names), node.lineno))
    return found


def private_attributes(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(module, `_name`, line) for `mod._name` where `mod` is bound by `import`/`from pkg import mod`
    to a module of the package."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE) and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE) and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            out.append((bound[node.value.id], node.attr, node.lineno))
    return out


def _under(module: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return module == prefix or module.startswith(prefix + ".")


def targets(imp: Import) -> list[str]:
    """What an import reaches: `import a.b` -> a.b; `from a import b, c` -> a.b, a.c."""
    return [f"{imp.module}.{name}" for name in imp.names] if imp.names else [imp.module]


def violations(root: Path = ROOT) -> list[str]:
    """Every boundary the package's modules break, as `file:line: what`."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        package = package_of(module)
        where = path.relative_to(root.parent)
        tree = ast.parse(path.read_text(), filename=str(path))
        for imp in imports(tree, module, path.name == "__init__.py"):
            for target in targets(imp):
                if any(_under(target, p) for p in FORBIDDEN.get(package, ())) and not any(
                    _under(target, a) for a in ALLOWED.get(package, ())
                ):
                    out.append(f"{where}:{imp.line}: {package}/ imports {target}")
                name = target.rsplit(".", 1)[-1]
                if (imp.names and _under(target, PACKAGE) and package_of(target) != package
                        and name.startswith("_") and not name.startswith("__")):
                    out.append(f"{where}:{imp.line}: imports the private {target}")
        for target, name, line in private_attributes(tree):
            if package_of(target) != package:
                out.append(f"{where}:{line}: reads the private {target}.{name}")
    return out


def test_the_package_keeps_its_boundaries():
    assert violations() == []


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    """A synthetic package breaking every rule once: each break is reported, the clean module is not."""
    root = tmp_path / PACKAGE
    files = {
        "__init__.py": "",
        "ingest.py": "def _helper(): ...\n",
        "domain/__init__.py": "",
        "domain/calendar.py": "import dagster as dg\nfrom backfill_dagster.domain import bars\n",
        "domain/bars.py": "def f():\n    from backfill_dagster.store.bars import BarStore\n",
        "domain/clean.py": "from backfill_dagster.domain.calendar import x\nimport numpy\n",
        "providers/__init__.py": "",
        "providers/alpaca.py": "from ..store import schema\nfrom backfill_dagster import ingest\n",
        "store/__init__.py": "",
        "store/bars.py": "from backfill_dagster.providers.base import Adjustment\n",
        "instance/__init__.py": "",
        "instance/event_log.py": "import backfill_dagster.orchestration.partitions\n",
        "orchestration/__init__.py": "",
        "orchestration/assets.py": (
            "from backfill_dagster.ingest import _helper\n"
            "from backfill_dagster.domain import calendar\n"
            "calendar._private()\n"
            "from backfill_dagster.orchestration.x import _ours  # same package: allowed\n"
        ),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = violations(root)
    assert sorted(found) == sorted([
        f"{PACKAGE}/domain/calendar.py:1: domain/ imports dagster",
        f"{PACKAGE}/domain/bars.py:2: domain/ imports {PACKAGE}.store.bars.BarStore",
        f"{PACKAGE}/providers/alpaca.py:1: providers/ imports {PACKAGE}.store.schema",
        f"{PACKAGE}/providers/alpaca.py:2: providers/ imports {PACKAGE}.ingest",
        f"{PACKAGE}/store/bars.py:1: store/ imports {PACKAGE}.providers.base.Adjustment",
        f"{PACKAGE}/instance/event_log.py:1: instance/ imports {PACKAGE}.orchestration.partitions",
        f"{PACKAGE}/orchestration/assets.py:1: imports the private {PACKAGE}.ingest._helper",
        f"{PACKAGE}/orchestration/assets.py:3: reads the private {PACKAGE}.domain.calendar._private",
    ]), found

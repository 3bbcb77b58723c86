"""The image's install steps, run here without a container engine: the files the Dockerfile copies
into its build, then deploy/docker/install.sh (the script its RUN step runs) into a fresh virtual
environment, which must end with the project and every container profile's Dagster library
installed at the lock file's versions.

The fresh environment sees the test environment's distributions (a `.pth` line naming its
site-packages), so pip resolves the image's requirements against the lock and checks them, but
downloads and installs only what is missing: the project's wheel. A download of every distribution
took 6 to 14 minutes on this machine; CI's own install (`.ci/run`, from the same lock, extras in the
test extra) is that part."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
INSTALL = ROOT / "deploy" / "docker" / "install.sh"


def build_copies() -> list[tuple[list[str], str]]:
    """The Dockerfile's COPY steps before its install (sources relative to the build context, the
    repository root; destination relative to its WORKDIR)."""
    copies = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("RUN sh ./install.sh"):
            return copies
        if line.startswith("COPY "):
            *sources, destination = line.split()[1:]
            copies.append((sources, destination))
    raise AssertionError("the Dockerfile runs no install.sh")


def stage_build(into: Path) -> None:
    for sources, destination in build_copies():
        for source in sources:
            path = ROOT / source
            if not path.exists():
                pytest.fail(f"the image copies {source}, which the repository lacks"
                            + (" (the lock file: README, 'Tests')" if source == "constraints.txt" else ""))
            target = into / destination / path.name if destination.endswith("/") or destination == "./" else into / destination
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


def pinned(constraints: Path) -> dict[str, str]:
    pins = {}
    for line in constraints.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.slow
def test_the_images_install_steps_work_in_a_fresh_environment(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    stage_build(build)
    assert (build / "install.sh").read_bytes() == INSTALL.read_bytes()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(site, "_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the test environment's executables (dagster, dagster-webserver, ...) after the fresh one's own
    path = f"{venv / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "PYTHON": str(venv / "bin" / "python"), "PATH": path}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(["sh", "./install.sh", "."], cwd=build, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    freeze = subprocess.run([venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, check=True, timeout=120).stdout
    installed = {k: v for k, v in (line.split("==", 1) for line in freeze.splitlines() if "==" in line)}
    installed = {k.lower().replace("_", "-"): v for k, v in installed.items()}
    assert installed["backfill-dagster"] == "0.1.0"
    for library in ("dagster", "dagster-webserver", "dagster-postgres", "dagster-docker", "dagster-k8s", "dagster-aws"):
        assert library in installed, library
    # every installed distribution the lock names is at the lock's version
    pins = pinned(build / "constraints.txt")
    assert {"dagster", "dagster-postgres"} <= set(pins)
    differing = {k: (v, pins[k]) for k, v in installed.items() if k in pins and pins[k] != v}
    assert not differing, differing
    # and the lock names every one (the image's extras included), so no version is pip's choice of the day
    unpinned = set(installed) - set(pins) - {"backfill-dagster", "pip", "setuptools", "wheel"}
    assert not unpinned, f"installed but not in constraints.txt (regenerate the lock with the extras): {sorted(unpinned)}"
    # installed as a wheel, not from the source tree (the image deletes it after the install)
    shutil.rmtree(build)
    out = subprocess.run([venv / "bin" / "python", "-c", "import backfill_dagster.definitions, importlib.resources as r; "
                          "print(r.files('backfill_dagster').joinpath('sql').is_dir())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_the_install_script_refuses_to_run_without_the_lock_file(tmp_path):
    proc = subprocess.run(["sh", str(INSTALL), str(tmp_path)], env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{tmp_path}/constraints.txt is missing: the image installs only the versions it pins" in proc.stderr

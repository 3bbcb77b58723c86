"""The README's first hour, as a new user lives it: every command block of "Quickstart" and "Using
it", in order, in a fresh copy of the repository (its own virtualenv, installed by the README's own
command, and a fresh data directory), each asserted to succeed; `dagster dev` started from the
project root as the README says, in the background (its "second terminal"), until the blocks after
it are done, then terminated.

Two commands are not run as written, and only these: the Quickstart's second command (install the
test extra, run the suite) is not run here, because it is the command CI runs verbatim on a clean
clone (`.ci/run`; tests/test_readme.py keeps the two the same) and the suite it starts is what runs
this test; and `dagster dev` gets `-p <free port>` so that it never meets another server on port 3000.

One thing around them differs from a fresh machine: the first command runs as written, into a virtualenv that already sees the test environment's
distributions (a `.pth` line naming its site-packages, as tests/deploy_containers/test_image_install.py
does): pip resolves the command's requirements against the lock and checks them, and installs only
the project, editable, from the copy. Installing every distribution again took ~40 CPU seconds of
the suite's; that part of the command is CI's own install (`.ci/run`: the same command with the
test extra, on a clean clone).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy import ROOT, free_port

pytestmark = [pytest.mark.slow]

START_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 1200
BLOCK_TIMEOUT_S = 1200


def readme_blocks(text: str, section: str) -> list[str]:
    """The ```bash blocks of one `## section` of the README, in order."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def fresh_copy(target: Path) -> Path:
    """The repository's files as a clone holds them (tracked ones only: no data, no virtualenv)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def venv_seeing_this_environment(project: Path) -> None:
    """`python3 -m venv .venv` ahead of the README (its own run of it keeps the directory), with the
    test environment's site-packages on its path after its own, and the commands of its
    distributions (`dagster`, `dagster-daemon`, ...) in the venv's bin as pip writes them, run by the
    venv's own interpreter."""
    venv = project / ".venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(site, "_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"] in ("backfill-dagster", "backfill_dagster", "pip"):
            continue  # the README's command installs the project; the venv has its own pip
        for entry in dist.entry_points.select(group="console_scripts"):
            script = venv / "bin" / entry.name
            script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {entry.module} import {entry.attr.split('.')[0]}\n"
                              f"sys.exit({entry.attr}())\n")
            script.chmod(0o755)


def user_env(home: Path) -> dict[str, str]:
    """A shell's environment without anything of this test run: no BACKFILL_* or DAGSTER_* variable,
    no virtualenv; pip's own settings (its index) kept."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "PIP_", "SSL_CERT", "REQUESTS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if k.startswith(keep)}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(venv))
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


def run_block(script: str, cwd: Path, env: dict[str, str], timeout: float, log: Path) -> str:
    """One block in `bash -e`, echoing each command; its output, or a failure naming the command."""
    proc = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    with log.open("a") as out:
        out.write(f"$ block\n{script}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n")
    assert proc.returncode == 0, (
        f"README block failed ({proc.returncode}):\n{script}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr (each command after '+')\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def environment_lines(block: str) -> str:
    """A block's lines that set up its terminal (activate, export): what a later block there inherits."""
    return "\n".join(line for line in block.splitlines() if line.startswith((". ", "source ", "export ")))


def test_every_command_of_quickstart_and_using_it_succeeds_in_order(tmp_path):
    text = (ROOT / "README.md").read_text()
    quickstart, using = readme_blocks(text, "Quickstart"), readme_blocks(text, "Using it")
    assert len(quickstart) == 2 and len(using) == 3, "the README's blocks changed: update this test's reading"
    project = fresh_copy(tmp_path / "backfill_dagster")
    env = user_env(tmp_path / "home")
    log = tmp_path / "readme-commands.log"

    # Quickstart: install and demo. Its second command is CI's own (see the docstring).
    assert quickstart[0].startswith("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e . && ")
    venv_seeing_this_environment(project)
    demo = run_block(quickstart[0], project, env, INSTALL_TIMEOUT_S, log)
    assert "Successfully installed backfill-dagster" in demo, demo
    imported = subprocess.run([project / ".venv" / "bin" / "python", "-c", "import backfill_dagster; print(backfill_dagster.__file__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    assert imported.startswith(str(project / "backfill_dagster")), imported  # the copy's code, not this checkout's
    assert re.search(r"run \S+ \(AAPL, MSFT, NVDA\): SUCCESS", demo), demo
    assert "Traceback" not in demo
    ci = (ROOT / ".ci" / "run").read_text()
    assert quickstart[1].strip() in ci, "the Quickstart's test command is no longer the one CI runs"

    # Using it: the first terminal's commands.
    first, ui, back = using
    out = run_block(first, project, env, BLOCK_TIMEOUT_S, log)
    assert "removed: MSFT" in out and re.search(r"^MSFT\s+removed\s+m15", out, flags=re.M), out

    # The second terminal: dagster dev from the project root, left running.
    assert ui.strip().splitlines()[-1] == "dagster dev"
    port = free_port()
    dev_log = (tmp_path / "dagster-dev.log").open("wb")
    dev = subprocess.Popen(["bash", "-e", "-c", f"{ui.strip()} -p {port}"], cwd=project, env=env, stdout=dev_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert dev.poll() is None, f"dagster dev exited:\n{(tmp_path / 'dagster-dev.log').read_text()[-4000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"dagster dev did not answer within {START_TIMEOUT_S} s"
            time.sleep(1)

        # Back in the first terminal: ensure-coverage waits for the daemon's backfill; the CLI runs.
        out = run_block(environment_lines(first) + "\n" + back, project, env, BLOCK_TIMEOUT_S, log)
        assert "launched backfill" in out, out
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=10)
        dev_log.close()

    # The range example filled its box, in all four timeframes, up to its last symbol.
    start, last_symbol = re.search(r'--partition-range "(\S+)\|\w+\.\.\.\S+\|(\w+)"', back).groups()
    out = run_block(environment_lines(first) + f"\nbackfill-dagster coverage --symbol {last_symbol} --detail",
                    project, env, BLOCK_TIMEOUT_S, log)
    for timeframe in ("m15", "h1", "h4", "d1"):
        assert re.search(rf"^{start} {timeframe}\s+complete", out, flags=re.M), out
    # Nothing a user would take for trouble on the way: no traceback, no beta warning per asset.
    assert "Traceback" not in log.read_text() and "BetaWarning" not in log.read_text()

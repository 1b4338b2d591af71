"""Run the dummy app as a user would, and find out whether a SLURM cluster is up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

APP = Path(__file__).resolve().parent / "dummy_app" / "app.py"


def run_app(
    args: list[str], cwd: Path, timeout: float = 120, env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """`python app.py <args>` in `cwd`, output captured."""
    return subprocess.run(
        [sys.executable, str(APP), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


def start_app(args: list[str], cwd: Path) -> subprocess.Popen:
    """The same, in the background (the caller interrupts its jobs, then waits)."""
    return subprocess.Popen(
        [sys.executable, str(APP), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def slurm_status() -> Optional[str]:
    """None when a SLURM cluster with accounting answers, else why not."""
    for cmd in (["sinfo", "-h", "-o", "%T"], ["sacctmgr", "-n", "list", "cluster"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"`{' '.join(cmd)}` failed: {err}"
        if out.returncode != 0 or not out.stdout.strip():
            return f"`{' '.join(cmd)}` failed: {(out.stderr or out.stdout).strip() or 'no output'}"
        if cmd[0] == "sinfo" and not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
            return f"no SLURM node is up (sinfo: {out.stdout.split()})"
    return None


def require_slurm() -> None:
    """Skip when SLURM is not up, except where it must be: in CI (CI=true) or when the caller said
    it started one (MGRPO_SLURM=1); there, fail. Start one with `bash .ci/slurm_single_node.sh`."""
    why = slurm_status()
    if why is None:
        return
    if os.environ.get("CI") == "true" or os.environ.get("MGRPO_SLURM") == "1":
        pytest.fail(f"SLURM must be up here (CI=true or MGRPO_SLURM=1) but is not: {why}")
    pytest.skip(f"SLURM is not up ({why}); start it with `bash .ci/slurm_single_node.sh`")

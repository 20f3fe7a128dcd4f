"""Real processes for the tests: start, wait for, stop; and the session's one
real Prefect server (``real_prefect_server`` in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_healthy(url: str) -> bool:
    """Whether the Prefect API at ``url`` (``http://HOST:PORT/api``) answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor
        # a process group of its own, so that stopping it also stops its children
        # (the server's uvicorn, the flow runs the serve process spawned)
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """``sig`` to the process group, then SIGKILL if it is still there after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    try:  # children left behind after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(check, timeout: float, what: str, log: Path, proc: subprocess.Popen, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(step)
    pytest.fail(f"{what}: not within {timeout:.0f} s:\n{tail(log)}")

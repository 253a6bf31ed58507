"""`spoolsweep up` serves the review console beside the pipeline (and not with --once or --no-console)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.console import INCIDENT, build_store

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # each test starts `spoolsweep up` (and the console) in a subprocess


@pytest.fixture(scope="module")
def store(corpus, policy, tmp_path_factory) -> Path:
    """A store holding one triaged incident (its manifest only: nothing for the pipeline to do)."""
    built = build_store(tmp_path_factory.mktemp("up") / "built", corpus, policy)
    root = built.parent / "store"
    shutil.copytree(built / "manifests", root / "manifests")
    return root


def _start(*args: str) -> tuple[subprocess.Popen, queue.Queue, threading.Thread]:
    env = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the address
    env.pop("SPOOLSWEEP_CONSOLE_TOKEN", None)
    p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "up", *args], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x.rstrip("\n")) for x in p.stderr], daemon=True)
    reader.start()
    return p, lines, reader


def _until(lines: queue.Queue, word: str, timeout: float = 60) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if word in line:
            return seen
    raise AssertionError(f"no {word!r} in {seen}")


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_up_serves_the_console(store):
    p, lines, _ = _start("--store", str(store), "--console-port", "0", "--interval", "0.2")
    try:
        seen = _until(lines, "console: http://127.0.0.1:")
        url = seen[-1].split("console: ", 1)[1].strip()
        base, token = url.split("/?token=")
        assert len(token) >= 24
        assert httpx.get(f"{base}/api/incidents").status_code == 401
        r = httpx.get(f"{base}/api/incidents", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and [i["id"] for i in r.json()["incidents"]] == [INCIDENT]
        _until(lines, "watching")
    finally:
        _stop(p)
    assert p.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/api/incidents")


@pytest.mark.parametrize("args", [("--no-console",), ("--once",)])
def test_no_console_when_told_or_once(store, tmp_path, args):
    root = tmp_path / "s"
    shutil.copytree(store, root)
    p, lines, reader = _start("--store", str(root), "--console-port", "0", *args)
    try:
        if "--once" in args:
            p.wait(120)
            reader.join(10)  # every line read
            seen = []
            while not lines.empty():
                seen.append(lines.get())
        else:
            seen = _until(lines, "watching")
    finally:
        _stop(p)
    # the console's line, not the word: a temporary path may hold "console" (this test's name does)
    assert not any("console: http" in line for line in seen), seen

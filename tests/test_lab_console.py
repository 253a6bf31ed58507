"""The demo tells the console's address only once the console answers there."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spoolsweep.lab import run as lab_run
from spoolsweep.lab.story import Story

pytestmark = pytest.mark.slow  # a stand-in console that starts in two seconds

# a console that takes two seconds to start listening, as `spoolsweep console` does on a busy machine
SLOW_CONSOLE = """
import socket, sys, time
port = int(sys.argv[sys.argv.index('--port') + 1])
time.sleep(2)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', port)); s.listen()
while True:
    s.accept()[0].close()
"""


def _fake_console(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    real = subprocess.Popen

    def popen(args, **kw):  # the console's command line, run by a stand-in
        return real([sys.executable, "-c", code, *args[3:]], **kw)

    monkeypatch.setattr(lab_run.subprocess, "Popen", popen)


def _said(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(lab_run, "say", said.append)
    return said


def test_the_address_is_told_once_the_console_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_console(monkeypatch, SLOW_CONSOLE)
    said = _said(monkeypatch)
    st = Story(tmp_path, said.append)
    proc = lab_run._open_console(st)
    assert proc is not None
    try:
        url = (tmp_path / "console.url").read_text().strip()
        port = int(url.split(":")[2].split("/")[0])
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # refused if told too early
        assert any(url in s for s in said)
    finally:
        proc.kill()
        proc.wait()


def test_a_console_that_dies_is_said_and_no_address_is_written(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_console(monkeypatch, "import sys; sys.exit(3)")
    said = _said(monkeypatch)
    assert lab_run._open_console(Story(tmp_path, said.append)) is None
    assert not (tmp_path / "console.url").exists()
    assert any("did not start" in s for s in said), said

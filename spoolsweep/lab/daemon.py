"""What the lab's private MTAs share: unpacking Debian's packages, waiting for a daemon to listen, stopping it,
handing it one message."""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def wait_listening(proc: subprocess.Popen[bytes], port: int, name: str,
                   log: Callable[[], str] = lambda: "", seconds: float = 20) -> None:
    """Return once 127.0.0.1:port answers SMTP; RuntimeError (with the daemon's stderr and log) if it exits or
    does not listen in time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{name} daemon exited: {err}\n{log()}".rstrip())
        with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", port, timeout=2) as s:
            s.noop()
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port}\n{log()}".rstrip())


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a daemon we started, killing it if it does not go within ten seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def submit(port: int, mail_from: str, rcpt_to: Sequence[str], data: bytes, helo: str,
           login: tuple[str, str] | None = None, source: str | None = None, auth_param: bool = False) -> bytes:
    """One message over SMTP to 127.0.0.1:port, from the loopback address `source` if given (the client the MTA
    records); the text of the 250 reply to DATA (which names the queue id). RuntimeError naming the command an
    MTA refused. `auth_param`: MAIL FROM carries AUTH=<the login> (RFC 4954), which Sendmail keeps in its qf
    file once its trust_auth rules accept it (the identity this session authenticated as)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0) if source else None) as s:
        s.ehlo(helo)
        if login:
            s.login(*login)
        return transaction(s, mail_from, rcpt_to, data, [f"AUTH={xtext(login[0])}"] if login and auth_param else [])


def transaction(s: smtplib.SMTP, mail_from: str, rcpt_to: Sequence[str], data: bytes,
                options: Sequence[str] = ()) -> bytes:
    """MAIL FROM (with BODY=8BITMIME added for 8-bit data), RCPT TO each, DATA on an open session; the text of
    the 250 reply to DATA. RuntimeError naming the command the MTA refused."""
    opts = list(options)
    if any(b > 127 for b in data) and "BODY=8BITMIME" not in opts:
        opts.append("BODY=8BITMIME")
    code, msg = s.mail(mail_from, opts)
    if code != 250:
        raise RuntimeError(f"MAIL FROM refused: {code} {msg!r}")
    for r in rcpt_to:
        code, msg = s.rcpt(r)
        if code not in (250, 251):
            raise RuntimeError(f"RCPT TO {r} refused: {code} {msg!r}")
    code, msg = s.data(data)
    if code != 250:
        raise RuntimeError(f"DATA refused: {code} {msg!r}")
    return msg


def xtext(v: str) -> str:
    """RFC 3461 xtext, as AUTH= and XCLIENT want their values."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in v)


def unpack_debs(cache: Path, packages: Sequence[str], needs: Sequence[str]) -> Path | None:
    """Debian's packages downloaded into `cache` and unpacked under cache/root once (never installed: they
    would replace the system's MTA); the root, or None if a path in `needs` is still missing there."""
    root = cache / "root"
    if all((root / n).exists() for n in needs):
        return root
    if os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("unshare"):
        return None
    cache.mkdir(parents=True, exist_ok=True)
    cp = subprocess.run(["apt-get", "download", *packages], cwd=cache, capture_output=True, timeout=300, check=False)
    if cp.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        cp = subprocess.run(["apt-get", "download", *packages], cwd=cache, capture_output=True, timeout=300,
                            check=False)
    debs = sorted(cache.glob("*.deb"))
    if cp.returncode != 0 and len(debs) < len(packages):
        return None
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
    return root if all((root / n).exists() for n in needs) else None

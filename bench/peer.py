"""Run a content filter from Debian (SpamAssassin's spamd, local tests only) over a sample, for comparison.

The filter sees the same messages triage sees and answers spam or ham; throughput is measured with
both cores busy (spamd with two children, two spamc clients at a time). Network tests are off
(`--local`), and spamd listens on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spoolsweep.lab import free_port


def sample_from_snapshot(snap: Path, truth: dict[str, str], n: int) -> list[tuple[bytes, str]]:
    """Every k-th message of a canonical snapshot with its label, n at most."""
    out: list[tuple[bytes, str]] = []
    step = max(1, len(truth) // n)
    with tarfile.open(snap, "r:*") as tf:
        for i, ti in enumerate(m for m in tf if m.isfile() and m.name in truth):
            if i % step:
                continue
            fh = tf.extractfile(ti)
            if fh is not None:
                out.append((fh.read(), truth[ti.name]))
            if len(out) >= n:
                break
    return out


def run_spamassassin(sample: list[tuple[bytes, str]]) -> dict[str, float] | None:
    spamd, spamc = shutil.which("spamd"), shutil.which("spamc")
    if not spamd or not spamc:
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.Popen([spamd, "--local", "--listen", f"127.0.0.1:{port}", "-m", "2", "--min-spare", "2",
                                 "--max-spare", "2", "-u", "nobody", "--helper-home-dir", home, "--syslog", "stderr",
                                 "--allowed-ips=127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                return None

            def check(item: tuple[bytes, str]) -> tuple[str, bool]:
                r = subprocess.run([spamc, "-d", "127.0.0.1", "-p", str(port), "-c", "-t", "120"], input=item[0],
                                   capture_output=True, timeout=180)
                return item[1], r.returncode == 1

            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as ex:
                results = list(ex.map(check, sample))
            dt = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
    n_valid = sum(1 for label, _ in results if label == "valid")
    n_spam = len(results) - n_valid
    return {"messages": len(results), "msgs_per_s": len(results) / dt,
            "valid_as_spam": sum(1 for label, s in results if label == "valid" and s),
            "valid_as_spam_share": sum(1 for label, s in results if label == "valid" and s) / max(1, n_valid),
            "spam_as_valid_share": sum(1 for label, s in results if label == "spam" and not s) / max(1, n_spam)}

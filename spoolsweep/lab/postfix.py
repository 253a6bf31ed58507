"""A private Postfix from Debian's package (own config and queue in a temp dir) for the demo and the tests.

Usage:

    with private_postfix() as pf:
        qid = pf.send("a@example.net", ["b@example.org"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        pf.wait_queued(1)
        pf.postqueue_json(); pf.postcat(qid); pf.tar_spool(dest)

or `with PostfixInstance.running(root) as pf: ...`; tests use the fixtures in tests/support/postfix.py.

Why it works without systemd or syslog: `postfix -c DIR start` runs master from our own
config_directory; `maillog_file` sends logs to a file through postlogd; `relayhost` points at
a closed 127.0.0.1 port so every message stays in `deferred/` (or `active/`) for the test to read.
`smtpd_authorized_xclient_hosts = 127.0.0.1` lets a test set the client address, name, HELO and
SASL login with XCLIENT. A tiny Dovecot-protocol auth server (DovecotAuth) gives real SMTP AUTH.
Needs root (Postfix's queue is owned by the `postfix` user) and the Debian `postfix` package.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from spoolsweep.lab import daemon, free_port

POSTFIX = "/usr/sbin/postfix"
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound then released), so relaying there fails at connect."""
    return free_port()


def available() -> str | None:
    """None if a private Postfix can run here, else why not."""
    if not Path(POSTFIX).exists():
        return "Debian package postfix is not installed (add it to .ci/apt-packages)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its queue is owned by the postfix user)"
    return None


MASTER_CF = """\
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main_cf(root: Path, port: int, relay_port: int, auth_socket: Path | None, open_relay: bool = True,
            extra: dict[str, str] | None = None) -> str:
    # open_relay: the misconfiguration spam incidents start from; XCLIENT clients from anywhere may relay
    relay = "check_client_access static:OK," if open_relay else ""
    lines = [
        "compatibility_level = 3.6",
        f"config_directory = {root / 'etc'}",
        f"queue_directory = {root / 'spool'}",
        f"data_directory = {root / 'data'}",
        "mail_owner = postfix",
        "setgid_group = postdrop",
        f"maillog_file = {root / 'maillog'}",
        f"maillog_file_prefixes = {root}",
        "myhostname = mx1.example.org",
        "mydomain = example.org",
        "myorigin = example.org",
        # nothing is delivered locally: all mail goes to the dead relay and stays queued
        "mydestination =",
        "local_recipient_maps =",
        "alias_maps =",
        "alias_database =",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        f"relayhost = [127.0.0.1]:{relay_port}",
        "mynetworks = 127.0.0.0/8",
        f"smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated {relay} reject_unauth_destination",
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
        "smtputf8_enable = no",
        # retry rarely, and do not bounce for days, so the queue holds still while a test reads it
        "queue_run_delay = 3600s",
        "minimal_backoff_time = 3600s",
        "maximal_backoff_time = 7200s",
        "maximal_queue_lifetime = 5d",
        "bounce_queue_lifetime = 5d",
        "smtp_connect_timeout = 2s",
        "message_size_limit = 20480000",
        "biff = no",
        "shlib_directory = /usr/lib/postfix",
        "meta_directory = /etc/postfix",
    ]
    if auth_socket is not None:
        lines += [
            "smtpd_sasl_auth_enable = yes",
            "smtpd_sasl_type = dovecot",
            f"smtpd_sasl_path = {auth_socket}",
            "smtpd_sasl_security_options = noanonymous",
            "smtpd_tls_auth_only = no",
            "broken_sasl_auth_clients = no",
        ]
    # one line per parameter: `extra` replaces a setting in place. A parameter given twice makes every
    # Postfix process warn ("overriding earlier entry") as it starts, and postlogd sends its own start-up
    # warnings to its own socket: with the kernel's datagram queue full (net.unix.max_dgram_qlen may be
    # 10) it waits on itself, and every process that logs waits with it (seen in CI: MAIL FROM and
    # `postfix stop` hung)
    settings = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}
    settings.update(extra or {})
    return "".join(f"{k} = {v}".rstrip() + "\n" for k, v in settings.items())


class DovecotAuth:
    """A minimal Dovecot SASL auth server (the protocol Postfix's `smtpd_sasl_type = dovecot` speaks).

    Accepts PLAIN for the users given; anything else fails. Enough for real SMTP AUTH in tests.
    """

    def __init__(self, path: Path, users: dict[str, str]) -> None:
        self.path = path
        self.users = users
        self._srv: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.path))
        os.chmod(self.path, 0o666)  # noqa: S103 - Postfix smtpd (user postfix) must connect
        srv.listen(8)
        srv.settimeout(0.2)
        self._srv = srv
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._srv:
            self._srv.close()

    def _serve(self) -> None:
        assert self._srv is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _check(self, resp: str) -> str | None:
        try:
            _authz, user, pw = base64.b64decode(resp).decode("utf-8").split("\x00")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if self.users.get(user) == pw else None

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t" + b"0" * 32 + b"\nDONE\n")
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    parts = line.decode("utf-8", "replace").split("\t")
                    if parts[0] != "AUTH" or len(parts) < 3:
                        continue
                    rid = parts[1]
                    args = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
                    if parts[2].upper() != "PLAIN":
                        conn.sendall(f"FAIL\t{rid}\treason=unsupported mechanism\n".encode())
                    elif "resp" not in args:
                        conn.sendall(f"CONT\t{rid}\t\n".encode())
                    elif user := self._check(args["resp"]):
                        conn.sendall(f"OK\t{rid}\tuser={user}\n".encode())
                    else:
                        conn.sendall(f"FAIL\t{rid}\tuser=\n".encode())


class PostfixInstance:
    """One private Postfix: `root/etc` (config), `root/spool` (queue), `root/maillog`."""

    def __init__(self, root: Path, users: dict[str, str] | None = None, open_relay: bool = True,
                 extra: dict[str, str] | None = None) -> None:
        self.open_relay = open_relay
        # extra main.cf settings, e.g. {"enable_long_queue_ids": "yes",
        #   "transport_maps": "inline:{ok.example=smtp:[127.0.0.1]:2525}"} to deliver some mail for real
        self.extra = extra
        self.root = root
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.maillog = root / "maillog"
        self.port = free_port()
        self.relay_port = closed_port()
        self.users = users if users is not None else {"bob@example.org": "s3cret"}
        self.auth: DovecotAuth | None = None
        self.started = False

    # -- life cycle -------------------------------------------------------------------------------
    def setup(self) -> None:
        for d in (self.etc, self.spool, self.root / "data"):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "data").chmod(0o755)
        shutil.chown(self.root / "data", "postfix", "postfix")
        self.root.chmod(0o755)
        auth_socket = None
        if self.users:
            auth_socket = self.root / "auth.sock"
            self.auth = DovecotAuth(auth_socket, self.users)
            self.auth.start()
        cf = main_cf(self.root, self.port, self.relay_port, auth_socket, self.open_relay, self.extra)
        (self.etc / "main.cf").write_text(cf)
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        self.maillog.touch()
        self.check_quiet()

    def check_quiet(self) -> None:
        """RuntimeError naming the first warning Postfix prints reading this configuration: each process
        would log it at start-up, postlogd included, which logs it through its own socket (see main_cf)."""
        cp = self.run("/usr/sbin/postconf", "-c", str(self.etc), "-n", check=False)
        warns = [x for x in cp.stderr.decode(errors="replace").splitlines() if "warning:" in x]
        if warns or cp.returncode != 0:
            first = warns[0] if warns else cp.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"private postfix configuration is not quiet: {first}")

    def start(self) -> None:
        self.setup()
        # `postfix check` creates the queue directories with the right owners
        self.run(POSTFIX, "-c", str(self.etc), "check", check=False)
        self.run(POSTFIX, "-c", str(self.etc), "start")
        self.started = True
        self._wait_listening()

    def stop(self) -> None:
        """`postfix stop`; if that hangs, the master's whole process group is killed (as postfix-script's
        own last resort does) and RuntimeError says so with the maillog, after the instance is gone."""
        hung = None
        if self.started:
            try:
                self.run(POSTFIX, "-c", str(self.etc), "stop", check=False, timeout=30)
            except subprocess.TimeoutExpired:
                hung = ("`postfix stop` did not finish in 30 s; killed the master's process group; "
                        f"maillog:\n{self.log()}")
                self._kill_master()
            self._wait_master_gone()
            self.started = False
        if self.auth:
            self.auth.stop()
        if hung:
            raise RuntimeError(hung)

    def _kill_master(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.spool / "pid" / "master.pid").read_text().split()[0])
            os.killpg(pid, 9)

    @classmethod
    @contextlib.contextmanager
    def running(cls, root: Path, users: dict[str, str] | None = None, open_relay: bool = True,
                extra: dict[str, str] | None = None) -> Iterator[PostfixInstance]:
        pf = cls(root, users, open_relay, extra)
        try:
            pf.start()
            yield pf
        finally:
            pf.stop()

    def _wait_listening(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.1)
        raise RuntimeError(f"postfix smtpd did not listen on {self.port}; maillog:\n{self.log()}")

    def _wait_master_gone(self, timeout: float = 15) -> None:
        pid_file = self.spool / "pid" / "master.pid"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                return
            time.sleep(0.1)

    # -- tools ------------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "MAIL_CONFIG": str(self.etc)}
        cp = subprocess.run(argv, capture_output=True, env=env, input=input, timeout=timeout, check=False)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.decode(errors='replace')}"
                               f"\nmaillog:\n{self.log()}")
        return cp

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def postqueue_json(self) -> list[dict]:
        out = self.run("/usr/sbin/postqueue", "-c", str(self.etc), "-j").stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def postcat(self, queue_id: str, *flags: str) -> str:
        """`postcat -q ID` with flags, e.g. ("-e",) envelope, ("-bh",) body+headers, ("-h",) headers."""
        return self.run("/usr/sbin/postcat", "-c", str(self.etc), *flags, "-q", queue_id).stdout.decode(
            "utf-8", "replace")

    def postcat_bytes(self, queue_id: str, *flags: str) -> bytes:
        return self.run("/usr/sbin/postcat", "-c", str(self.etc), *flags, "-q", queue_id).stdout

    def postsuper(self, *args: str) -> None:
        """e.g. postsuper("-h", qid) puts a message on hold."""
        self.run("/usr/sbin/postsuper", "-c", str(self.etc), *args)

    def wait_queued(self, n: int, timeout: float = 30,
                    queues: Sequence[str] = ("deferred", "hold")) -> list[dict]:
        """Wait until postqueue -j lists n messages, all in one of `queues` (deferred: delivery tried)."""
        end = time.monotonic() + timeout
        got: list[dict] = []
        while time.monotonic() < end:
            got = self.postqueue_json()
            if len(got) >= n and all(m["queue_name"] in queues for m in got):
                return got
            time.sleep(0.2)
        raise RuntimeError(f"expected {n} queued, got {len(got)}: {[m.get('queue_name') for m in got]}\n{self.log()}")

    # -- putting mail in --------------------------------------------------------------------------
    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
        s.ehlo("test-client.example.net")
        return s

    def send(self, mail_from: str, rcpt_to: Sequence[str], data: bytes, *,
             xclient: dict[str, str] | None = None, login: tuple[str, str] | None = None,
             helo: str | None = None, mail_options: Sequence[str] = ()) -> str:
        """Submit one message over SMTP; return its queue id (from the 250 reply to DATA).

        xclient: XCLIENT attributes (ADDR, NAME, HELO, PROTO, LOGIN, ...) sent before MAIL FROM,
        so the message looks like it came from that client. login: real SMTP AUTH PLAIN.
        """
        with self.smtp() as s:
            if xclient:
                attrs = " ".join(f"{k}={v}" for k, v in xclient.items())
                code, msg = s.docmd("XCLIENT", attrs)
                if code != 220:
                    raise RuntimeError(f"XCLIENT refused: {code} {msg!r}")
                s.ehlo_resp = None
                s.ehlo(helo or xclient.get("HELO", "test-client.example.net"))
            elif helo:
                s.ehlo(helo)
            if login:
                s.login(*login)
            try:
                msg = daemon.transaction(s, mail_from, rcpt_to, data, mail_options)
            except (smtplib.SMTPServerDisconnected, TimeoutError) as e:
                raise RuntimeError(f"private postfix stopped answering: {e}; maillog:\n{self.log()}") from e
        # "2.0.0 Ok: queued as 4Xyz..."
        return msg.decode().rsplit(" ", 1)[-1]

    def submit_local(self, mail_from: str, rcpt_to: Sequence[str], data: bytes, full_name: str | None = None,
                     extract: bool = False) -> None:
        """Local submission with Postfix's sendmail command (postdrop -> maildrop/). While the
        instance is stopped the file stays in maildrop/, as on a server whose pickup is down.
        extract: `sendmail -t`, recipients from the headers (they land in the extracted segment)."""
        argv = ["/usr/sbin/sendmail", "-f", mail_from, *(["-F", full_name] if full_name else []),
                *(["-t"] if extract else []), "--", *rcpt_to]
        self.run(*argv, input=data)

    # -- the demo's story: close the relay, point it at a sink ----------------------------------
    def postconf(self, *settings: str) -> None:
        """`postconf -e` each "name = value", then `postfix reload` (running smtpd processes finish first)."""
        self.run("/usr/sbin/postconf", "-c", str(self.etc), "-e", *settings)
        self.run(POSTFIX, "-c", str(self.etc), "reload")
        time.sleep(0.5)

    def close_relay(self) -> None:
        """Stop the bleeding: only our networks and authenticated users may relay from now on."""
        self.open_relay = False
        self.postconf("smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated "
                      "reject_unauth_destination")

    def relay_probe(self, client: str = "203.0.113.9", rcpt: str = "victim@example.com") -> tuple[int, str]:
        """What an outside client (set with XCLIENT) gets when it asks us to relay: (code, reply) to RCPT TO."""
        with self.smtp() as s:
            s.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE] HELO=probe.example.net")
            s.ehlo_resp = None
            s.ehlo("probe.example.net")
            s.mail("probe@example.net")
            code, msg = s.rcpt(rcpt)
            s.rset()
        return code, msg.decode(errors="replace")

    def relay_to(self, port: int) -> None:
        """Send what leaves the queue to 127.0.0.1:port (a sink) instead of the dead relay."""
        self.relay_port = port
        self.postconf(f"relayhost = [127.0.0.1]:{port}")

    def flush(self) -> None:
        self.run("/usr/sbin/postqueue", "-c", str(self.etc), "-f", check=False)

    # -- taking the queue out ---------------------------------------------------------------------
    def tar_spool(self, dest: Path, arcname: str = "var/spool/postfix") -> Path:
        """Tar the whole queue directory as an admin would (`tar czf q.tgz /var/spool/postfix`)."""
        with tarfile.open(dest, "w:gz") as tf:
            tf.add(self.spool, arcname=arcname)
        return dest


@contextlib.contextmanager
def private_postfix(users: dict[str, str] | None = None, open_relay: bool = True,
                    extra: dict[str, str] | None = None) -> Iterator[PostfixInstance]:
    """A running instance in a fresh /tmp dir, removed afterwards.

    Not under pytest's tmp_path: that sits below a 0700 directory the `postfix` user cannot enter.
    """
    root = Path(tempfile.mkdtemp(prefix="spoolsweep-postfix-"))
    try:
        with PostfixInstance.running(root, users, open_relay, extra) as pf:
            yield pf
    finally:
        shutil.rmtree(root, ignore_errors=True)


"""A private Exim 4 from Debian's packages, unpacked (never installed: exim4 and postfix conflict), for the demo and
the tests.

The .debs come from `apt-get download exim4-daemon-light exim4-base libidn12` into a cache dir and
are unpacked with `dpkg -x`. Debian's binary insists on a `Debian-exim` user; rather than add one to
the machine, each exim call runs in a private mount namespace (`unshare -m`) where /etc/passwd and
/etc/group are bind-mounted copies that have it. Mail stays queued: `queue_only`, and the only
route is to a closed 127.0.0.1 port (`self = send`, `allow_localhost`), except one test domain
that can be routed to a live sink so some recipients end up delivered; `relay_to(port)` sends everything
to a sink from then on. `root/exim` is a wrapper that runs the binary in its namespace (what the agent is
given as `--exim`). Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from spoolsweep.lab import daemon, free_port

# the unpacked binaries run as root: kept under the user's own cache, not a /tmp path anyone could create first
CACHE = Path(os.environ.get("SPOOLSWEEP_EXIM_CACHE") or Path.home() / ".cache" / "spoolsweep" / "exim-deb")
# exim4-daemon-light's libraries that a minimal Debian may lack (dpkg -x'd beside it, via LD_LIBRARY_PATH)
PACKAGES = ("exim4-daemon-light", "exim4-base", "libidn12", "libnsl2")
EXIM_UID = 64990


def unpacked() -> Path | None:
    """The unpacked package root, downloading and unpacking it once; None if that is impossible."""
    return daemon.unpack_debs(CACHE, PACKAGES, ["usr/sbin/exim4"])


def available() -> str | None:
    if os.geteuid() != 0:
        return "a private Exim needs root (mount namespace for its Debian-exim user)"
    if unpacked() is None:
        return "could not apt-get download + dpkg -x exim4-daemon-light (no network or no apt?)"
    return None


# the open relay of a real incident: every recipient accepted from anyone
OPEN_RCPT_ACL = "  accept"
# Debian's default: local domains, our own hosts and authenticated clients; the rest is refused
LOCKED_RCPT_ACL = """\
  accept  hosts = :
  accept  domains = +local_domains
  accept  hosts = +relay_from_hosts
  accept  authenticated = *
  deny    message = relay not permitted"""
LOCKED_LISTS = """\
domainlist local_domains = example.org
hostlist relay_from_hosts = 127.0.0.2"""

CONFIG = """\
primary_hostname = mx1.example.org
qualify_domain = example.org
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
pid_file_path = {root}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
keep_environment =
host_lookup =
rfc1413_hosts =
trusted_users = root
queue_only = {queue_only}
split_spool_directory = {split}
acl_smtp_rcpt = acl_rcpt
acl_smtp_data = acl_data
auth_advertise_hosts = *

{hostlists}
begin acl
acl_rcpt:
{acl_rcpt}
acl_data:
  accept

begin routers
sink:
  driver = manualroute
  domains = delivered.example
  route_list = * 127.0.0.1::{sink_port}
  transport = remote_smtp
  self = send
dead_relay:
  driver = manualroute
  route_list = * 127.0.0.1::{relay_port}
  transport = remote_smtp
  self = send

begin transports
remote_smtp:
  driver = smtp
  allow_localhost
  hosts_try_fastopen =

begin retry
*  *  F,5d,1h

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if and {{{{eq{{$auth2}}{{bob@example.org}}}}{{eq{{$auth3}}{{s3cret}}}}}}}}
  server_set_id = $auth2
"""


class EximInstance:
    def __init__(self, root: Path, split: bool = False, sink_port: int | None = None, open_relay: bool = True) -> None:
        self.root = root
        self.pkg = unpacked()
        if self.pkg is None:
            raise RuntimeError("exim packages not available")
        self.binary = self.pkg / "usr/sbin/exim4"
        self.port = free_port()
        self.split = split
        self.sink_port = sink_port or free_port()
        self.dead_port = free_port()
        self.relay_port = self.dead_port  # where mail for other domains goes: closed until relay_to()
        self.queue_only = True
        self.open_relay = open_relay
        self.wrapper = root / "exim"
        self.conf = root / "exim.conf"
        self.spool = root / "spool"
        self.daemon: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        for d in (self.root / "log", self.spool):
            os.chown(d, EXIM_UID, EXIM_UID)
        self.root.chmod(0o755)
        self.write_config()
        passwd = Path("/etc/passwd").read_text() + f"Debian-exim:x:{EXIM_UID}:{EXIM_UID}::/nonexistent:/bin/false\n"
        group = Path("/etc/group").read_text() + f"Debian-exim:x:{EXIM_UID}:\n"
        (self.root / "passwd").write_text(passwd)
        (self.root / "group").write_text(group)
        # the same namespace as argv(), as one executable: `spoolsweep agent --mta exim --exim ROOT/exim`
        self.wrapper.write_text(
            "#!/bin/sh\n# the private Exim of spoolsweep's lab: its own passwd/group with Debian-exim\n"
            f"exec unshare -m sh -c 'mount --bind {self.root / 'passwd'} /etc/passwd && "
            f"mount --bind {self.root / 'group'} /etc/group && mount --bind {self.binary.parent} /usr/sbin && "
            f"LD_LIBRARY_PATH={self.pkg / 'usr/lib/x86_64-linux-gnu' if self.pkg else ''} exec {self.binary} "
            f"\"$@\"' sh \"$@\"\n")
        self.wrapper.chmod(0o755)

    def write_config(self) -> None:
        self.conf.write_text(CONFIG.format(
            root=self.root, port=self.port, split="true" if self.split else "false", sink_port=self.sink_port,
            relay_port=self.relay_port, queue_only="true" if self.queue_only else "false",
            hostlists="" if self.open_relay else LOCKED_LISTS,
            acl_rcpt=OPEN_RCPT_ACL if self.open_relay else LOCKED_RCPT_ACL))
        self.conf.chmod(0o644)

    def reload(self) -> None:
        """Rewrite the configuration and restart the daemon (stopped and started again, so the test knows when the
        new configuration is in force)."""
        self.write_config()
        self.stop()
        self._start_daemon()

    def close_relay(self) -> None:
        """Stop the bleeding: Debian's RCPT ACL (local domains, relay_from_hosts, authenticated) instead of accept."""
        self.open_relay = False
        self.reload()

    def relay_to(self, port: int) -> None:
        """From now on, mail for other domains goes to 127.0.0.1:port (a sink), delivered as it arrives."""
        self.relay_port = port
        self.queue_only = False
        self.reload()

    def argv(self, *args: str) -> list[str]:
        # Exim re-executes its compiled-in /usr/sbin/exim4 (to deliver what the daemon received, on SIGHUP):
        # in the namespace /usr/sbin is the unpacked package's
        script = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && mount --bind "$3" /usr/sbin && '
                  'shift 3 && LD_LIBRARY_PATH="$LIBS" exec "$@"')
        return ["unshare", "-m", "sh", "-c", script, "sh", str(self.root / "passwd"), str(self.root / "group"),
                str(self.binary.parent), str(self.binary), "-C", str(self.conf), *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "LIBS": str(self.pkg / "usr/lib/x86_64-linux-gnu") if self.pkg else ""}

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cp = subprocess.run(self.argv(*args), input=input, capture_output=True, env=self.env(), timeout=60,
                            check=False)
        if check and cp.returncode != 0:
            raise RuntimeError(f"exim {' '.join(args)} failed ({cp.returncode}): {cp.stderr.decode(errors='replace')}"
                               f"\n{self.log()}")
        return cp

    def log(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*log")):
            out.append(f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def start(self) -> None:
        self.setup()
        self._start_daemon()

    def _start_daemon(self) -> None:
        self.daemon = subprocess.Popen(self.argv("-bdf"), env=self.env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        daemon.wait_listening(self.daemon, self.port, "exim", self.log)

    def stop(self) -> None:
        daemon.stop(self.daemon)

    # -- mail in ----------------------------------------------------------------------------------
    def send_smtp(self, mail_from: str, rcpt_to: Sequence[str], data: bytes,
                  login: tuple[str, str] | None = None, helo: str = "client.example.net") -> str:
        return daemon.submit(self.port, mail_from, rcpt_to, data, helo, login).decode().split("id=")[-1].strip()

    def send_bs(self, mail_from: str, rcpt_to: Sequence[str], data: bytes, *, client_address: str,
                client_name: str | None = None, helo: str = "client.example.net", protocol: str | None = None,
                auth_id: str | None = None, authenticator: str | None = None) -> str:
        """An SMTP session on stdin (`exim -bs`) that Exim records as coming from client_address (-oMa etc.)."""
        args = ["-bs", "-oMa", client_address]
        if client_name:
            args += ["-oMs", client_name]
        if protocol:
            args += ["-oMr", protocol]
        if auth_id:
            args += ["-oMai", auth_id, "-oMaa", authenticator or "plain"]
        body = data.replace(b"\r\n", b"\n").replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
        session = (f"EHLO {helo}\r\nMAIL FROM:<{mail_from}>\r\n".encode()
                   + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpt_to)
                   + b"DATA\r\n" + body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\nQUIT\r\n")
        out = self.run(*args, input=session).stdout.decode(errors="replace")
        for line in out.splitlines():
            if line.startswith("250") and "id=" in line:
                return line.split("id=")[-1].strip()
        raise RuntimeError(f"no message id in exim -bs reply:\n{out}\n{self.log()}")

    # -- what Exim says ---------------------------------------------------------------------------
    def bp(self) -> str:
        return self.run("-bp").stdout.decode(errors="replace")

    def mvh(self, msg_id: str) -> str:
        return self.run("-Mvh", msg_id).stdout.decode(errors="replace")

    def mvb(self, msg_id: str) -> bytes:
        return self.run("-Mvb", msg_id).stdout

    def deliver(self, msg_id: str) -> None:
        """One delivery attempt now (`exim -M id`): sink recipients get delivered, the rest defer."""
        self.run("-M", msg_id, check=False)

    def tar_spool(self, dest: Path, arcname: str = "var/spool/exim4") -> Path:
        with tarfile.open(dest, "w:gz") as tf:
            tf.add(self.spool, arcname=arcname)
        return dest


@contextlib.contextmanager
def private_exim(split: bool = False, sink_port: int | None = None, open_relay: bool = True) -> Iterator[EximInstance]:
    root = Path(tempfile.mkdtemp(prefix="spoolsweep-exim-"))
    ex = EximInstance(root, split, sink_port, open_relay)
    try:
        ex.start()
        yield ex
    finally:
        ex.stop()
        shutil.rmtree(root, ignore_errors=True)

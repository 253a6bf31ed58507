"""A private Sendmail from Debian's packages (unpacked, never installed: sendmail-bin and postfix conflict) for the
demo and the tests.

The .debs come from `apt-get download` of PACKAGES below into a cache dir
and are unpacked with `dpkg -x`; the set-group-id bit of the unpacked copy is dropped so the loader honours
LD_LIBRARY_PATH (libwrap). The configuration is built from a .mc with the packages' own m4 files.

Sendmail resolves its own host name at start-up and sleeps a minute when it cannot, and asks DNS for
anything not in its hosts file, so every call runs in a private mount namespace (`unshare -m`) where
/etc/hosts, /etc/nsswitch.conf and /etc/resolv.conf are bind-mounted copies: names come from our hosts
file, and the only name server is 127.0.0.1 (no query leaves the machine). The daemon (`-bD`, in the
foreground) listens on 127.0.0.1 only; its smart host is `sink.spoolsweep.test` (127.0.0.1 in that hosts
file) on a closed port, so mail stays queued, until `relay_to(port)` points it at a live sink. Needs root.
With `users`, it offers SMTP AUTH (PLAIN, LOGIN) against a private sasldb made with saslpasswd2: the folder with
the plugins, Sendmail.conf and that sasldb is bind-mounted over the system's SASL plugin folder in the namespace.

    with private_sendmail() as sm:
        sm.send_smtp("a@example.net", ["b@example.org"], data); sm.bp(); sm.argv("-qQ", "-bp")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from spoolsweep.lab import daemon, free_port

# the unpacked binaries run as root: kept under the user's own cache, not a /tmp path anyone could create first
CACHE = Path(os.environ.get("SPOOLSWEEP_SENDMAIL_CACHE") or Path.home() / ".cache" / "spoolsweep" / "sendmail-deb")
# libwrap0 is sendmail-bin's one library a minimal Debian may lack (unpacked beside it, via LD_LIBRARY_PATH)
# sasl2-bin (saslpasswd2) and the Cyrus SASL plugins: real SMTP AUTH against a private sasldb
PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf", "m4", "libwrap0", "sasl2-bin", "libsasl2-modules",
            "libsasl2-modules-db")
BINARY = "usr/libexec/sendmail/sendmail"
SASLPASSWD = "usr/sbin/saslpasswd2"
# where Cyrus SASL looks for its plugins and, among other folders, for Sendmail.conf (Debian's multiarch path)
SASL_DIR = "usr/lib/x86_64-linux-gnu/sasl2"
SASL_PLUGINS = ("libplain.so", "liblogin.so", "libsasldb.so")


def unpacked() -> Path | None:
    """The unpacked package root, downloading and unpacking it once; None if that is impossible."""
    root = daemon.unpack_debs(CACHE, PACKAGES, [BINARY, "usr/bin/m4", SASLPASSWD,
                                                *(f"{SASL_DIR}/{p}" for p in SASL_PLUGINS)])
    if root is not None:
        # a set-group-id binary runs with LD_LIBRARY_PATH ignored; this private copy needs no group
        (root / BINARY).chmod(0o755)
    return root


def available() -> str | None:
    if os.geteuid() != 0:
        return "a private Sendmail needs root (mount namespace for its own hosts and resolver files)"
    if not Path("/etc/nsswitch.conf").exists() or not Path("/etc/resolv.conf").exists():
        return "no /etc/nsswitch.conf or /etc/resolv.conf to stand in for"
    if not Path(f"/{SASL_DIR}").is_dir():
        return f"no /{SASL_DIR} (Debian's libsasl2-modules) to mount the private SASL folder over"
    if unpacked() is None:
        return "could not apt-get download + dpkg -x sendmail-bin (no network or no apt?)"
    return None


SINK_HOST = "sink.spoolsweep.test"

MC = """\
divert(-1)
# spoolsweep's private Sendmail: one queue, 127.0.0.1 only, everything through the smart host
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `mx1.example.org')dnl
define(`QUEUE_DIR', `{root}/mqueue')dnl
define(`confPID_FILE', `{root}/sendmail.pid')dnl
define(`confDELIVERY_MODE', `{mode}')dnl
define(`ALIAS_FILE', `')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confSERVICE_SWITCH_FILE', `{root}/service.switch')dnl
define(`confHOSTS_FILE', `{root}/hosts')dnl
define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe')dnl
define(`confTO_CONNECT', `2s')dnl
define(`confTO_ICONNECT', `2s')dnl
define(`confMIN_QUEUE_AGE', `1h')dnl
define(`confTO_QUEUEWARN', `5d')dnl
define(`confTO_QUEUERETURN', `5d')dnl
define(`SMART_HOST', `relay:[{sink_host}]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {relay_port}')dnl
FEATURE(`nocanonify')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`accept_unresolvable_domains')dnl
{features}{auth}DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
MAILER(`smtp')dnl
{local_config}"""


class SendmailInstance:
    """One private Sendmail: `root/sendmail.cf` (built from `root/sendmail.mc`), `root/mqueue`, and `root/sendmail`,
    a wrapper that runs the unpacked binary with that configuration in its namespace (what the agent is given
    as `--sendmail`)."""

    def __init__(self, root: Path, relay_port: int | None = None, open_relay: bool = True,
                 features: Sequence[str] = (), mode: str = "background", local_config: str = "",
                 users: dict[str, str] | None = None) -> None:
        self.root = root
        self.users = users or {}
        pkg = unpacked()
        if pkg is None:
            raise RuntimeError("sendmail packages not available")
        self.pkg = pkg
        self.binary = pkg / BINARY
        self.port = free_port()
        self.relay_port = relay_port or free_port()  # closed until relay_to(): mail stays queued
        self.open_relay = open_relay
        self.features = list(features)
        self.mode = mode
        self.local_config = local_config  # raw cf lines, e.g. "CR10.1" (class R: may relay)
        self.mc = root / "sendmail.mc"
        self.cf = root / "sendmail.cf"
        self.queue = root / "mqueue"
        self.wrapper = root / "sendmail"
        self.daemon: subprocess.Popen[bytes] | None = None

    # -- configuration --------------------------------------------------------------------------
    def mc_text(self) -> str:
        features = [*(["promiscuous_relay"] if self.open_relay else []), *self.features]
        return MC.format(root=self.root, mode=self.mode, sink_host=SINK_HOST, relay_port=self.relay_port,
                         port=self.port, features="".join(f"FEATURE(`{f}')dnl\n" for f in features),
                         auth="define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl\nTRUST_AUTH_MECH(`PLAIN LOGIN')dnl\n"
                         if self.users else "",
                         local_config=f"LOCAL_CONFIG\n{self.local_config}\n" if self.local_config else "")

    def build_cf(self) -> None:
        """m4 the .mc into sendmail.cf with the packages' cf/m4 files, as `sendmailconfig` would."""
        self.mc.write_text(self.mc_text())
        cfdir = self.pkg / "usr/share/sendmail/cf"
        cp = subprocess.run([str(self.pkg / "usr/bin/m4"), f"-D_CF_DIR_={cfdir}/", str(cfdir / "m4/cf.m4"),
                             str(self.mc)], capture_output=True, timeout=60, check=False)
        if cp.returncode != 0 or b"QueueDirectory" not in cp.stdout:
            raise RuntimeError(f"m4 {self.mc} failed: {cp.stderr.decode(errors='replace')}")
        self.cf.write_bytes(cp.stdout)

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.queue.mkdir(mode=0o700, exist_ok=True)
        host = os.uname().nodename.split(".")[0] or "localhost"
        (self.root / "etc-hosts").write_text(
            f"127.0.0.1 {host}.example.org {host} localhost mx1.example.org {SINK_HOST}\n")
        (self.root / "hosts").write_text((self.root / "etc-hosts").read_text())
        (self.root / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (self.root / "service.switch").write_text("hosts files\naliases files\n")
        self.build_cf()
        binds = [(self.root / src, f"/etc/{dst}") for src, dst in (
            ("etc-hosts", "hosts"), ("nsswitch.conf", "nsswitch.conf"), ("resolv.conf", "resolv.conf"))]
        if self.users:
            binds.append((self._sasl(), f"/{SASL_DIR}"))
        mounts = " && ".join(f"mount --bind {src} {dst}" for src, dst in binds)
        libs = self.pkg / "usr/lib/x86_64-linux-gnu"
        self.wrapper.write_text(
            "#!/bin/sh\n# the private Sendmail of spoolsweep's lab: its own hosts/resolver files, its own sendmail.cf\n"
            f"exec unshare -m sh -c '{mounts} && LD_LIBRARY_PATH={libs} exec {self.binary} -C {self.cf} \"$@\"' "
            "sh \"$@\"\n")
        self.wrapper.chmod(0o755)

    def _sasl(self) -> Path:
        """root/sasl2: the plugins, Sendmail.conf and a sasldb of `users` (realm: the server's name, as Sendmail
        asks for a user without one), to stand in for the system's SASL folder."""
        if not Path(f"/{SASL_DIR}").is_dir():
            raise RuntimeError(f"no /{SASL_DIR} on this system to mount the private SASL folder over")
        sasl = self.root / "sasl2"
        sasl.mkdir(mode=0o755, exist_ok=True)
        for p in (self.pkg / SASL_DIR).iterdir():
            if p.name.startswith(tuple(n.removesuffix(".so") for n in SASL_PLUGINS)):
                shutil.copy2(p, sasl / p.name, follow_symlinks=True)
        (sasl / "Sendmail.conf").write_text(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                                            f"sasldb_path: /{SASL_DIR}/sasldb2\nmech_list: PLAIN LOGIN\n")
        for user, password in self.users.items():
            cp = subprocess.run([str(self.pkg / SASLPASSWD), "-f", str(sasl / "sasldb2"), "-c", "-p", "-u",
                                 "mx1.example.org", user], input=password.encode(), capture_output=True, timeout=30,
                                check=False)
            if cp.returncode != 0:
                raise RuntimeError(f"saslpasswd2 {user}: {cp.stderr.decode(errors='replace')}")
        return sasl

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.setup()
        self._start_daemon()

    def _start_daemon(self) -> None:
        # -bD: the daemon in the foreground (ours to stop); no -q: no queue runner, nothing retried behind our back
        self.daemon = subprocess.Popen([str(self.wrapper), "-bD"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        daemon.wait_listening(self.daemon, self.port, "sendmail")

    def stop(self) -> None:
        daemon.stop(self.daemon)

    def restart(self) -> None:
        """Rebuild sendmail.cf from the .mc and restart the daemon (what `sendmailconfig` + a restart do)."""
        self.stop()
        self.build_cf()
        self._start_daemon()

    def argv(self, *args: str) -> list[str]:
        return [str(self.wrapper), *args]

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cp = subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=60, check=False)
        if check and cp.returncode != 0:
            raise RuntimeError(f"sendmail {' '.join(args)} failed ({cp.returncode}): "
                               f"{cp.stderr.decode(errors='replace')}")
        return cp

    # -- the demo's story -------------------------------------------------------------------------
    def close_relay(self) -> None:
        """Stop the bleeding: drop FEATURE(`promiscuous_relay'), rebuild the cf, restart."""
        self.open_relay = False
        self.restart()

    def relay_to(self, port: int) -> None:
        """Send what leaves the queue to 127.0.0.1:port (a sink) instead of the closed port."""
        self.relay_port = port
        self.restart()

    # -- mail in ----------------------------------------------------------------------------------
    def send_smtp(self, mail_from: str, rcpt_to: Sequence[str], data: bytes, helo: str = "client.example.net",
                  login: tuple[str, str] | None = None, source: str | None = None) -> str:
        """One message over SMTP, from the loopback address `source` if given (spoolsweep.lab.loopback: Sendmail
        records it as the client); returns its queue id (from the 250 reply to DATA)."""
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        # "2.0.0 6B1M5bE3012952 Message accepted for delivery"
        return daemon.submit(self.port, mail_from, rcpt_to, data, helo, login, source,
                             auth_param=True).decode().split()[1]

    # -- what Sendmail says -----------------------------------------------------------------------
    def bp(self, quarantined: bool = False) -> str:
        return self.run(*(["-qQ"] if quarantined else []), "-bp").stdout.decode(errors="replace")

    def files(self) -> list[str]:
        return sorted(p.name for p in self.queue.iterdir())


@contextlib.contextmanager
def private_sendmail(relay_port: int | None = None, open_relay: bool = True, features: Sequence[str] = (),
                     mode: str = "background", local_config: str = "",
                     users: dict[str, str] | None = None) -> Iterator[SendmailInstance]:
    root = Path(tempfile.mkdtemp(prefix="spoolsweep-sendmail-"))
    sm = SendmailInstance(root, relay_port, open_relay, features, mode, local_config, users)
    try:
        sm.start()
        yield sm
    finally:
        sm.stop()
        shutil.rmtree(root, ignore_errors=True)

"""Real client addresses for an MTA that cannot be told them (Sendmail has no XCLIENT): each generated client gets
its own loopback address to connect from, and the site policy is rewritten onto those addresses.

On Linux all of 127.0.0.0/8 is routed to `lo`, so a socket may bind() to any 127.x.y.z before connecting to
127.0.0.1, and the MTA records that address as the client, in its Received line and its queue file alike.
The mapping keeps what triage looks at: every client /24 (IPv6: /64) gets its own loopback /24, in the order
first seen, so distinct clients stay distinct and a botnet's networks stay apart (the console groups by /24);
127.0.0.0/24 stays itself (mail made on the host, like bounces, comes from 127.0.0.1 as before). A trusted
network of the policy also names the loopback /24s of the clients seen in it, so the same verdicts follow.

    lb = Loopback(a.envelope.client_address for a in messages); lb.source("203.0.113.9")  # '127.0.1.9'
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable

_LOOPBACK = ipaddress.ip_network("127.0.0.0/24")  # the host itself: never remapped
_SLOTS = 1 << 16  # 127.0.0.0/24 .. 127.255.255.0/24, slot 0 being the host's own


class Loopback:
    """A deterministic map from the incident's client addresses to loopback source addresses."""

    def __init__(self, clients: Iterable[str | None]) -> None:
        self.slots: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
        for c in clients:
            if c:
                a = ipaddress.ip_address(c)
                net = self._net(a)
                if net != _LOOPBACK and net not in self.slots:
                    if len(self.slots) + 1 >= _SLOTS:
                        raise ValueError(f"more than {_SLOTS - 1} client networks: no loopback /24 left for {net}")
                    self.slots[net] = len(self.slots) + 1

    @staticmethod
    def _net(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 64}", strict=False)

    def _slot_net(self, slot: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((0x7F000000 | slot << 8, 24))

    def source(self, client: str | None) -> str:
        """The loopback address to connect from for this client (None: made on the host, 127.0.0.1)."""
        if not client:
            return "127.0.0.1"
        a = ipaddress.ip_address(client)
        net = self._net(a)
        if net == _LOOPBACK:
            return str(a)
        # the last byte (IPv6: a lab has few addresses per /64); .0 and .255, a network's own and its broadcast
        # address, are no client's, and an MTA may read them as such
        host = min(max(int(a) & 0xFF, 1), 254)
        return str(self._slot_net(self.slots[net])[host])

    def trusted_networks(self, networks: Iterable[str]) -> list[str]:
        """The policy's trusted networks for the lab: a network holding 127.0.0.1 shrinks to the host's own /24
        (the rest of 127.0.0.0/8 is the clients'); every other one stays, for the addresses written inside the
        mail (a bounce quotes the Received lines of the message it returns), joined by the loopback /24 of every
        client seen in it."""
        out: list[str] = []
        for n in networks:
            net = ipaddress.ip_network(n, strict=False)
            if ipaddress.ip_address("127.0.0.1") in net:
                out.append(str(_LOOPBACK))
                continue
            out.append(str(net))
            for client_net, slot in self.slots.items():
                if client_net.version == net.version and client_net.subnet_of(net):  # type: ignore[arg-type]
                    out.append(str(self._slot_net(slot)))
        return list(dict.fromkeys(out))

    def policy(self, toml: str) -> str:
        """The site policy text with its trusted_networks moved onto the loopback side (server_ips stay: they
        name the server itself, which blocklists are asked about, and no client connects from them)."""
        import tomllib

        nets = self.trusted_networks(tomllib.loads(toml).get("trusted_networks", []))
        return re.sub(r"(?m)^trusted_networks\s*=.*$",
                      "# and the loopback /24s this lab's clients connect from (spoolsweep.lab.loopback)\n"
                      f"trusted_networks = {json.dumps(nets)}", toml)

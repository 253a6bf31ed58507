"""The lab's loopback client addresses (spoolsweep/lab/loopback.py): distinct clients stay distinct, a /24 stays
one /24, the host stays 127.0.0.1, and the policy trusts exactly the loopback /24s of its trusted clients."""

from __future__ import annotations

import ipaddress
import socket

from pipeline.generator import POLICY_TOML
from pipeline.policy import SitePolicy
from spoolsweep.lab.loopback import Loopback


def test_mapping_keeps_clients_and_networks_apart():
    clients = ["203.0.113.9", "203.0.113.10", "198.51.100.80", "192.0.2.10", "192.0.2.77", "24.1.2.3", None]
    lb = Loopback(clients)
    src = {c: lb.source(c) for c in clients}
    assert src[None] == "127.0.0.1"
    assert len(set(src.values())) == len(clients), "distinct clients stay distinct"
    assert all(ipaddress.ip_address(s).is_loopback for s in src.values())
    net = {c: ipaddress.ip_network(f"{s}/24", strict=False) for c, s in src.items() if c}
    assert net["203.0.113.9"] == net["203.0.113.10"] != net["198.51.100.80"], "a /24 stays one /24, others apart"
    assert Loopback(clients).source("24.1.2.3") == src["24.1.2.3"], "deterministic"


def test_policy_trusts_the_trusted_clients_loopback_networks_only():
    lb = Loopback(["192.0.2.10", "24.1.2.3", "198.51.100.80"])
    policy = SitePolicy.model_validate(__import__("tomllib").loads(lb.policy(POLICY_TOML)))
    assert policy.is_trusted(lb.source("192.0.2.10")) and policy.is_trusted("127.0.0.1")
    assert not policy.is_trusted(lb.source("24.1.2.3")) and not policy.is_trusted(lb.source("198.51.100.80"))
    assert policy.is_trusted("192.0.2.10"), "addresses written inside the mail are judged as before"


def test_a_socket_connects_from_its_loopback_address():
    src = Loopback(["203.0.113.9"]).source("203.0.113.9")
    with socket.socket() as srv, socket.socket() as cli:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cli.bind((src, 0))
        cli.connect(srv.getsockname())
        conn, peer = srv.accept()
        conn.close()
    assert peer[0] == src

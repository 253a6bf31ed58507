"""A real DNS server on 127.0.0.1 (dnslib) serving blocklist zones over UDP and TCP, for the demo and the tests."""

from __future__ import annotations

import socket
import time

from dnslib import QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from spoolsweep.lab import free_port


class ZoneResolver(BaseResolver):
    """Answers from a table name -> (A records, TXT records); rules for whole zones (slow, broken, wildcard)."""

    def __init__(self, records: dict[str, tuple[list[str], list[str]]], slow: set[str], broken: set[str],
                 wildcard: set[str], ttl: int = 300) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.slow, self.broken, self.wildcard, self.ttl = slow, broken, wildcard, ttl
        self.queries: list[str] = []

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        self.queries.append(f"{qname} {qtype}")
        if any(qname == z or qname.endswith("." + z) for z in self.slow):
            time.sleep(5)
            return reply
        if any(qname.endswith("." + z) for z in self.broken):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        a, txt = self.records.get(qname, ([], []))
        if not a and any(qname.endswith("." + z) for z in self.wildcard):
            a, txt = ["127.0.0.2"], ["everything is listed"]
        if not a:
            # like a real list: the SOA in the authority section sets how long "not listed" may be cached
            reply.header.rcode = RCODE.NXDOMAIN
            zone = ".".join(qname.split(".")[-2:])
            reply.add_auth(RR(zone, QTYPE.SOA, ttl=self.ttl, rdata=SOA(f"ns.{zone}", f"hostmaster.{zone}",
                                                                       (1, 3600, 600, 86400, self.ttl))))
            return reply
        if qtype == "A":
            for ip in a:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
        elif qtype == "TXT":
            for t in txt:
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(t), ttl=self.ttl))
        return reply


class LocalDNS:
    def __init__(self, resolver: ZoneResolver) -> None:
        self.resolver = resolver
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        for attempt in range(20):
            self.port = free_port(socket.SOCK_DGRAM)
            self.udp = DNSServer(resolver, address="127.0.0.1", port=self.port, logger=quiet)
            try:
                self.tcp = DNSServer(resolver, address="127.0.0.1", port=self.port, tcp=True, logger=quiet)
                break
            except OSError:  # free for UDP but not for TCP (another server, or TIME_WAIT): try another port
                self.udp.server.server_close()
                if attempt == 19:
                    raise

    def __enter__(self) -> LocalDNS:
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.udp.stop()
        self.tcp.stop()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

"""The blocklist tests' DNS server; it lives in spoolsweep/lab/dns.py (the demo uses it too)."""

from spoolsweep.lab.dns import LocalDNS, ZoneResolver, free_port  # noqa: F401 - re-exported for the tests

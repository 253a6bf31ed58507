"""The site policy (TOML): what is local, what is trusted, which lists to check."""

from __future__ import annotations

import hashlib
import ipaddress
import tomllib
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import PolicyError


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_members: int = Field(2_000_000, gt=0, description="members an archive may hold")
    max_member_bytes: int = Field(64 * 2**20, gt=0, description="largest single message")
    max_total_bytes: int = Field(64 * 2**30, gt=0, description="uncompressed bytes in all")
    max_index_bytes: int = Field(4 * 2**30, gt=0, description="a snapshot's index.jsonl (about 450 bytes a message)")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    campaign_similarity: float = Field(0.6, gt=0, le=1)
    campaign_min_size: int = Field(5, ge=2)
    compromised_min_client_ips: int = Field(3, ge=2)


def is_public_suffix(domain: str) -> bool:
    """Whether a domain is one under which anyone registers names (com, co.uk: the ICANN part of the Public
    Suffix List, which ships inside the publicsuffixlist package); False where that package is not installed
    (an agent's light install: triage, which has it, checks the policy again)."""
    psl = _icann_suffixes()
    return psl is not None and bool(domain) and bool(psl.is_public(domain))


@lru_cache(maxsize=1)
def _icann_suffixes() -> Any:
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        return None
    return PublicSuffixList(only_icann=True)


# trusted_networks refuses a public network wider than this (0.0.0.0/0, the two halves of the Internet, ...):
# a real organisation's own public allocation is narrower (pipeline.sitepolicy leaves out, from an MTA's
# configuration, any public network wider than /24 or /48)
_WIDEST_TRUSTED = {4: 8, 6: 16}


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    local_domains: list[str] = Field(default_factory=list)
    trusted_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    server_ips: list[str] = Field(default_factory=list)
    server_names: list[str] = Field(default_factory=list)
    relay_domains: list[str] = Field(default_factory=list, description="domains we legitimately relay for")
    blocklist_zones: list[str] | None = Field(None, description="zones to check; None = the catalogue")
    limits: Limits = Field(default_factory=Limits)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @field_validator("local_domains", "server_names", "relay_domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.strip().lower().rstrip(".") for d in v]

    @field_validator("local_domains", "relay_domains")
    @classmethod
    def _not_public_suffixes(cls, v: list[str]) -> list[str]:
        for d in v:
            if is_public_suffix(d):
                # every domain under it counted as ours: relay_domains = ["com", ...] made 147 of a 3,000-message
                # spamware queue's relayed spam valid
                raise ValueError(f"{d!r} is a public suffix: every domain under it would count as ours; list "
                                 "your own domains")
        return v

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                net = ipaddress.ip_network(n, strict=False)
            except ValueError as e:
                raise ValueError(f"{n!r} is not a network: {e}") from None
            if not net.is_private and net.prefixlen < _WIDEST_TRUSTED[net.version]:
                # mynetworks = 0.0.0.0/0 is the open relay under investigation: taken as the policy's trust, every
                # relayed spam came from a trusted network and was called valid, to be replayed
                raise ValueError(f"{n!r} is a public network of /{net.prefixlen}: trusting so much of the Internet "
                                 "is how a relay is opened, not evidence that its clients are ours; list the "
                                 "networks of your own hosts") from None
        return v

    @field_validator("server_ips")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_address(n)
            except ValueError:
                raise ValueError(f"{n!r} is not an IP address") from None
        return v

    @cached_property
    def _nets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]

    @cached_property
    def _trust_cache(self) -> dict[str, bool]:
        return {}

    def is_trusted(self, ip: str | None) -> bool:
        """In trusted_networks or one of server_ips; remembered, since a botnet of a few hundred
        addresses fills a queue of thousands."""
        if not ip:
            return False
        hit = self._trust_cache.get(ip)
        if hit is None:
            hit = self._trust_cache[ip] = self._is_trusted(ip)
        return hit

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.strip("[]").removeprefix("IPv6:").removeprefix("ipv6:"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self._nets) or str(addr) in self.server_ips

    @cached_property
    def _domain_cache(self) -> dict[str, tuple[bool, bool]]:
        return {}

    def _domain(self, domain: str) -> tuple[bool, bool]:
        """(local, relay) for a domain; remembered, since triage asks about every recipient."""
        hit = self._domain_cache.get(domain)
        if hit is None:
            if len(self._domain_cache) > 500_000:  # a queue to a million random domains stays bounded
                self._domain_cache.clear()
            d = domain.lower().rstrip(".")
            hit = self._domain_cache[domain] = (
                any(d == ld or d.endswith("." + ld) for ld in self.local_domains),
                any(d == rd or d.endswith("." + rd) for rd in self.relay_domains))
        return hit

    def is_local_address(self, address: str | None) -> bool:
        if not address or "@" not in address:
            return False
        return self._domain(address.rsplit("@", 1)[1])[0]

    def address_kind(self, address: str) -> tuple[bool, bool]:
        """(local, relay) for an address: one lookup for the two questions triage asks of every recipient."""
        if "@" not in address:
            return False, False
        return self._domain(address.rsplit("@", 1)[1])

    @cached_property
    def _short_names(self) -> frozenset[str]:
        return frozenset(n.split(".", 1)[0] for n in self.server_names)

    def is_our_host(self, name: str | None) -> bool:
        """A `by` name of ours: one of server_names or server_ips, or the bare first label of a server
        name (IIS and Exchange write their NetBIOS name, MX1 for mx1.example.org)."""
        if not name:
            return False
        n = name.lower().rstrip(".").strip("[]")
        return n in self.server_names or n in self.server_ips or ("." not in n and n in self._short_names)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def load_policy(path: str | Path | None) -> SitePolicy:
    if path is None:
        return SitePolicy()
    p = Path(path)
    return policy_from_toml(_read_policy_file(p), source=str(p))


def _read_policy_file(p: Path) -> str:
    """The file's text; every way it can fail is a one-line PolicyError naming the file."""
    if p.is_dir():
        raise PolicyError(f"{p}: is a folder, not a TOML file")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{p}: no such file") from None
    except OSError as e:
        raise PolicyError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        # utf-8-sig: a byte-order mark (Notepad writes one) is not part of the TOML
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{p}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); save it as UTF-8") \
            from None


def policy_from_toml(text: str, source: str = "policy") -> SitePolicy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not TOML: {e}") from None
    return policy_from_dict(data, source=source)


def policy_from_dict(data: dict[str, Any], source: str = "policy") -> SitePolicy:
    try:
        return SitePolicy.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{source}: key '{key}': {msg}")
        raise PolicyError("\n".join(lines)) from None

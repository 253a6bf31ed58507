"""The zone catalogue (pipeline/data/dnsbl.toml) as validated models: each answer code with its meaning and kind."""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Iterable, Sequence
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import SpoolsweepError

Family = Literal["ipv4", "ipv6", "domain"]
CodeKind = Literal["listed", "allow", "reputation", "error"]
# RFC 5782 section 5: every IP list lists 127.0.0.2 / ::FFFF:7F00:2 and no list may list 127.0.0.1 / ::FFFF:7F00:1;
# domain lists list TEST and never INVALID.
RFC5782_TEST: dict[str, str] = {"ipv4": "127.0.0.2", "ipv6": "::ffff:7f00:2", "domain": "test"}
RFC5782_NEVER: dict[str, str] = {"ipv4": "127.0.0.1", "ipv6": "::ffff:7f00:1", "domain": "invalid"}


class CatalogueError(SpoolsweepError):
    """The blocklist catalogue is not valid:"""


class UnknownZones(SpoolsweepError):
    """These blocklist zones are not in the catalogue (misspelt?):"""


class Code(BaseModel):
    """One documented answer: what it means, and whether it is a listing at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: CodeKind
    means: str


class Zone(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    zone: str = Field(description="the DNS zone; a keyed service writes {key} where its key goes")
    name: str
    lists: list[Family]
    kind: Literal["block", "allow", "reputation"] = Field(
        "block", description="what a plain code of this zone is: a listing, an allowlisting or a reputation score")
    codes: dict[str, Code] = Field(default_factory=dict,
                                   description="answer -> meaning; for bitmask zones the key is the bit's value")
    bitmask: bool = Field(False, description="the last octet is a sum of bits, one per sub-list (SURBL, URIBL)")
    ranges: dict[str, Code] = Field(default_factory=dict, description="network -> meaning, for a list that documents a "
                                    "whole range (Spamhaus: 127.255.255.0/24 are errors); exact codes come first")
    domain_form: Literal["registered", "as_given"] = Field(
        "registered", description="domain lists: query the registered domain (Public Suffix List) or the name as given")
    test: dict[Family, str] = Field(default_factory=dict, description="an entry the zone always lists, per family")
    never: dict[Family, str] = Field(default_factory=dict, description="an entry the zone must never list")
    key: str | None = Field(None, description="keyed service: SPOOLSWEEP_<KEY>_KEY or SPOOLSWEEP_<KEY>_SECRET")
    docs: str | None = Field(None, description="the list's own documentation of its answers")
    checked: date | None = Field(None, description="when the codes were last checked against docs")
    delist: str | None = None
    expires: bool = False
    status: Literal["live", "dead"] = "live"
    why_dead: str | None = None
    dead_since: str | None = Field(None, description="YYYY or YYYY-MM(-DD): when it stopped")
    dead_source: str | None = Field(None, description="where the shutdown was announced")
    answered: date | None = Field(None, description="last --check-catalogue run that saw every test entry answered")
    stopped: str | None = Field(None, description="set by --check-catalogue: date and why the tests went unanswered")

    @field_validator("codes", "ranges", mode="before")
    @classmethod
    def _plain_codes(cls, v: Any, info: Any) -> Any:
        # a plain string is a code of the zone's own kind; anything else says its kind
        kind = {"block": "listed", "allow": "allow", "reputation": "reputation"}[info.data.get("kind", "block")]
        return {c: ({"kind": kind, "means": m} if isinstance(m, str) else m) for c, m in (v or {}).items()}

    @model_validator(mode="after")
    def _consistent(self) -> Zone:
        if self.status == "dead" and not (self.why_dead and self.dead_since and self.dead_source):
            raise ValueError(f"{self.zone}: a dead zone needs why_dead, dead_since and dead_source")
        if self.status == "live":
            if not self.codes:
                raise ValueError(f"{self.zone}: a live zone needs its documented codes")
            if not self.docs:
                raise ValueError(f"{self.zone}: a live zone needs the URL of its documentation (docs)")
            if missing := [f for f in self.lists if f not in self.test]:
                raise ValueError(f"{self.zone}: a live zone needs its test entry for {', '.join(missing)}")
        for code in self.codes:
            if self.bitmask:
                if not code.isdigit() or int(code) not in {1 << i for i in range(8)}:
                    raise ValueError(f"{self.zone}: bitmask code {code!r} is not a single bit (1, 2, 4 ... 128)")
            elif not _is_v4(code):
                raise ValueError(f"{self.zone}: code {code!r} is not an IPv4 address")
        if ("{key}" in self.zone) != bool(self.key):
            raise ValueError(f"{self.zone}: a keyed zone has both key and {{key}} in its name")
        for net in self.ranges:
            try:
                ipaddress.IPv4Network(net)
            except ValueError:
                raise ValueError(f"{self.zone}: range {net!r} is not an IPv4 network") from None
        return self

    @property
    def id(self) -> str:
        """The name shown and matched in policies: the zone without its key."""
        return self.zone.replace("{key}.", "")

    def test_entry(self, family: str) -> str:
        return self.test.get(family) or RFC5782_TEST[family]  # type: ignore[call-overload]  # (dead zones)

    def never_entry(self, family: str) -> str:
        return self.never.get(family) or RFC5782_NEVER[family]  # type: ignore[call-overload]


def _is_v4(s: str) -> bool:
    try:
        return ipaddress.ip_address(s).version == 4
    except ValueError:
        return False


def parse_catalogue(text: str, source: str = "catalogue") -> tuple[Zone, ...]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogueError(f"{source}: {e}") from None
    found: list[Zone] = []
    for i, z in enumerate(data.get("zone", []), 1):
        try:
            found.append(Zone.model_validate(z))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            name = z.get("zone", f"#{i}") if isinstance(z, dict) else f"#{i}"
            raise CatalogueError(f"{source}: zone {name}: {where + ': ' if where else ''}{first['msg']}") from None
    zones = tuple(found)
    seen: set[str] = set()
    for z in zones:
        if z.id in seen:
            raise CatalogueError(f"{source}: zone {z.id} appears twice")
        seen.add(z.id)
    return zones


def read_catalogue(path: Path) -> tuple[Zone, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogueError(f"{path}: {e.strerror or e}") from None
    return parse_catalogue(text, str(path))


@cache
def load_catalogue() -> tuple[Zone, ...]:
    return parse_catalogue(resources.files("pipeline").joinpath("data/dnsbl.toml").read_text(encoding="utf-8"),
                           "pipeline/data/dnsbl.toml")


def select_zones(zones: Sequence[Zone], names: Iterable[str] | None) -> tuple[Zone, ...]:
    """The zones a policy names; a name the catalogue does not know is an error, never a silent skip."""
    if names is None:
        return tuple(zones)
    wanted = [n.strip().lower().rstrip(".") for n in names]
    known = {z.id: z for z in zones}
    if missing := [n for n in wanted if n not in known]:
        hints = []
        for n in missing:
            close = difflib.get_close_matches(n, list(known), n=1, cutoff=0.75)
            hints.append(f"{n} (did you mean {close[0]}?)" if close else n)
        raise UnknownZones(", ".join(hints))
    return tuple(known[n] for n in dict.fromkeys(wanted))


def mark_catalogue(text: str, health: Iterable[Any], today: date) -> str:
    """The catalogue text with each checked zone marked `answered = today` or `stopped = "today: why"`.

    Edited as text, block by block, so the file's comments and layout survive.
    """
    import re

    verdict: dict[str, list[Any]] = {}
    for h in health:
        if not h.why.startswith("needs a key"):
            verdict.setdefault(h.zone, []).append(h)
    blocks = re.split(r"(?m)^(?=\[\[zone\]\])", text)
    for i, block in enumerate(blocks):
        m = re.search(r'(?m)^zone = "([^"]+)"\n', block)
        if not m or (hs := verdict.get(m.group(1).replace("{key}.", ""))) is None:
            continue
        block = re.sub(r"(?m)^stopped = .*\n", "", block)
        bad = [h for h in hs if not h.working]
        if bad:
            why = "; ".join(f"{h.family}: {h.why}" for h in bad).replace("\\", "\\\\").replace('"', '\\"')
            line = f'stopped = "{today.isoformat()}: {why}"\n'
        else:
            block = re.sub(r"(?m)^answered = .*\n", "", block)
            line = f"answered = {today.isoformat()}\n"
        blocks[i] = block[:m.end()] + line + block[m.end():]
    return "".join(blocks)

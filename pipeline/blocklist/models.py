"""A blocklist answer is listed, not listed, allowlisted, a reputation or unknown (with why): never a bare bool."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    listed = "listed"
    not_listed = "not_listed"
    allowlisted = "allowlisted"  # on a whitelist: good news, never a listing
    reputation = "reputation"  # a reputation score the list documents as no listing (e.g. HostKarma yellow)
    unknown = "unknown"


class ZoneResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str
    zone: str
    status: Status
    queried: str | None = Field(None, description="the name asked when it is not the target (registered domain)")
    codes: list[str] = Field(default_factory=list)
    meanings: list[str] = Field(default_factory=list)
    why: str = ""
    txt: list[str] = Field(default_factory=list)
    delist_url: str | None = None
    docs_url: str | None = None
    expires: bool = False


class ZoneHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: str
    working: bool
    family: str | None = None
    test_entry: str | None = None
    why: str = ""


class BlocklistReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checked_at: datetime
    nameserver: str | None = None
    targets: list[str]
    results: list[ZoneResult]
    zones: list[ZoneHealth] = Field(default_factory=list, description="zones not queried or not trusted, and why")
    why: str = Field("", description="why no check ran at all (e.g. dnspython missing)")

    def listed(self) -> list[ZoneResult]:
        return [r for r in self.results if r.status is Status.listed]

    def state(self) -> str:
        """One line for lists of incidents: the worst news first."""
        if not self.results:
            return f"not checked: {self.why}" if self.why else "no zone checked"
        if listed := self.listed():
            return f"listed on {len({r.zone for r in listed})} zone(s)"
        if unknown := [r for r in self.results if r.status is Status.unknown]:
            return f"not listed, {len(unknown)} check(s) unknown"
        return "not listed"

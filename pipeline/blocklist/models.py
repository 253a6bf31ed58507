"""A blocklist answer is listed, not listed or unknown (with why): never a bare bool."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    listed = "listed"
    not_listed = "not_listed"
    unknown = "unknown"


class ZoneResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str
    zone: str
    status: Status
    codes: list[str] = Field(default_factory=list)
    meanings: list[str] = Field(default_factory=list)
    why: str = ""
    txt: list[str] = Field(default_factory=list)
    delist_url: str | None = None
    expires: bool = False


class ZoneHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: str
    working: bool
    why: str = ""


class BlocklistReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checked_at: datetime
    nameserver: str | None = None
    targets: list[str]
    results: list[ZoneResult]
    zones: list[ZoneHealth] = Field(default_factory=list, description="zones not queried or not trusted, and why")

    def listed(self) -> list[ZoneResult]:
        return [r for r in self.results if r.status is Status.listed]

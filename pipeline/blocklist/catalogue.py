"""The zone catalogue (pipeline/data/dnsbl.toml) as validated models."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Zone(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    zone: str
    name: str
    lists: list[Literal["ipv4", "ipv6", "domain"]]
    codes: dict[str, str] = Field(default_factory=dict)
    delist: str | None = None
    expires: bool = False
    status: Literal["live", "dead", "private"] = "live"
    why_dead: str | None = None
    test: str | None = Field(None, description="a name the zone always lists (domain lists)")

    def meaning(self, code: str) -> str:
        return self.codes.get(code) or self.codes.get("any") or f"listed (code {code})"


@cache
def load_catalogue() -> tuple[Zone, ...]:
    data = tomllib.loads(resources.files("pipeline").joinpath("data/dnsbl.toml").read_text(encoding="utf-8"))
    return tuple(Zone.model_validate(z) for z in data["zone"])

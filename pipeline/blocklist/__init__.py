"""DNS blocklist checks: the zone catalogue, correct answer semantics, and reports an admin can act on."""

from __future__ import annotations

from typing import Any

from pipeline.blocklist.catalogue import Zone, load_catalogue
from pipeline.blocklist.models import BlocklistReport, Status, ZoneHealth, ZoneResult

__all__ = ["BlocklistReport", "Status", "Zone", "ZoneHealth", "ZoneResult", "check_policy", "check_targets",
           "load_catalogue"]


def __getattr__(name: str) -> Any:
    # the checks need dnspython; the models and the catalogue (read by the console) do not
    if name in ("check_policy", "check_targets"):
        from pipeline.blocklist import check

        return getattr(check, name)
    raise AttributeError(name)

"""DNS blocklist checks: the zone catalogue, correct answer semantics, and reports an admin can act on."""

from pipeline.blocklist.catalogue import Zone, load_catalogue
from pipeline.blocklist.check import check_policy, check_targets
from pipeline.blocklist.models import BlocklistReport, Status, ZoneHealth, ZoneResult

__all__ = ["BlocklistReport", "Status", "Zone", "ZoneHealth", "ZoneResult", "check_policy", "check_targets",
           "load_catalogue"]

"""What changed between two blocklist reports: the rows a watcher tells a human about."""

from __future__ import annotations

from pipeline.blocklist.models import BlocklistReport


def changes(previous: BlocklistReport | None, current: BlocklistReport) -> list[dict[str, object]]:
    """Per target and zone whose status moved (a first report has nothing to compare with)."""
    if previous is None:
        return []
    before = {(r.target, r.zone): r.status.value for r in previous.results}
    return [{"target": r.target, "zone": r.zone, "before": before[(r.target, r.zone)], "now": r.status.value,
             "meanings": r.meanings, "delist_url": r.delist_url}
            for r in current.results if before.get((r.target, r.zone), r.status.value) != r.status.value]

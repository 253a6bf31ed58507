"""The console's review-by-group routes: groups largest first, one decision (or its undo) per group, pictures."""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.data import Incidents, Loaded, message_row
from console.fields import Who
from console.web import Console, incident_api, who
from pipeline.errors import StoreError
from pipeline.models import Verdict

PER_PAGE = 20  # groups on one page
SAMPLES = 5
TOP_IPS = 6


class GroupDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Verdict | None = Field(description="None undoes the group's decision")
    by: Who = "console"
    note: str = Field("", max_length=2000)


class PicturesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["campaign", "group"]
    ids: list[int] = Field(max_length=500)


@dataclass
class Index:
    """Per manifest, once: each group's members and, per group and campaign, arrivals and client addresses."""

    members: dict[int, list[int]] = field(default_factory=dict)
    arrivals: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    ips: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)


_cache: OrderedDict[str, Index] = OrderedDict()
_lock = threading.Lock()


def index(loaded: Loaded) -> Index:
    with _lock:
        hit = _cache.get(loaded.sha256)
        if hit is not None:
            _cache.move_to_end(loaded.sha256)
            return hit
    ix = Index()
    tl = loaded.timeline
    t0 = datetime.fromisoformat(tl["start"]).timestamp() if tl.get("start") else None
    width = tl.get("bucket_seconds") or 60.0
    n = tl.get("buckets") or 1
    for at, rows in loaded.columns(["review_group", "campaign", "arrival", "client"]):
        for j, (group, campaign, arrival, client) in enumerate(rows):
            keys = []
            if group is not None:
                ix.members.setdefault(group, []).append(at + j)
                keys.append(("group", group))
            if campaign is not None:
                keys.append(("campaign", campaign))
            for k in keys:
                if arrival is not None and t0 is not None:
                    b = min(n - 1, max(0, int((arrival - t0) // width)))
                    ix.arrivals.setdefault(k, [0] * n)[b] += 1
                ix.ips.setdefault(k, Counter())[client or "unknown"] += 1
    with _lock:
        _cache[loaded.sha256] = ix
        while len(_cache) > 4:
            _cache.popitem(last=False)
    return ix


def warm(inc: Incidents) -> None:
    """Parse every manifest and build its review index in the background, so the first review page is quick."""
    inc.warm()
    for iid in inc.ids():
        try:
            loaded = inc.load(iid)
        except (ValueError, OSError, StoreError):
            continue
        if loaded is not None:
            index(loaded)


def _net(ip: str) -> str:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    return str(ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 48}", strict=False))


def picture(ix: Index, key: tuple[str, int]) -> dict[str, Any]:
    """Arrivals per bucket of the incident's timeline, and how the client addresses spread."""
    ips = ix.ips.get(key, Counter())
    top = ips.most_common(TOP_IPS)
    return {"arrivals": ix.arrivals.get(key, []), "ips": {
        "distinct": len(ips), "networks": len({_net(ip) for ip in ips}), "top": top,
        "other": sum(ips.values()) - sum(c for _, c in top)}}


def undecided(loaded: Loaded, d: dict[str, Any], ix: Index) -> dict[str, int]:
    """Review messages nobody decided yet (no group, campaign or own decision), and the groups holding them."""
    groups = d.get("groups", {})
    camps = d.get("campaigns", {})
    msgs = d.get("messages", {})
    open_groups = open_messages = 0
    for gid, idx in ix.members.items():
        if str(gid) in groups:
            continue
        left = sum(1 for i in idx if loaded.ix.ids[i] not in msgs
                   and (loaded.ix.campaign[i] < 0 or str(loaded.ix.campaign[i]) not in camps))
        if left:
            open_groups += 1
            open_messages += left
    return {"groups": open_groups, "messages": open_messages, "groups_total": len(loaded.manifest.review_groups),
            "messages_total": sum(len(v) for v in ix.members.values())}


def _page(request: Request, default: int, most: int) -> tuple[int, int]:
    q = request.query_params
    page = int(q.get("page") or 1)
    per = int(q.get("per_page") or default)
    if page < 1 or not 1 <= per <= most:
        raise ValueError(f"page must be >= 1 and per_page 1..{most}")
    return page, per


async def groups(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    page, per = _page(request, PER_PAGE, 100)
    d = c.inc.decisions(iid)
    ov = c.inc.effective(loaded, d)
    ix = index(loaded)
    now_all = loaded.ix.verdicts(ov)
    out = []
    # review_groups are stored largest first
    for g in loaded.manifest.review_groups[(page - 1) * per:page * per]:
        idx = ix.members.get(g.id, [])
        now = Counter(now_all[i].value for i in idx)
        dec = d.get("groups", {}).get(str(g.id))
        out.append({**g.model_dump(mode="json"), "decision": dec,
                    "verdict": dec["verdict"] if dec else "review", "now": dict(now),
                    "samples": [message_row(x, ov) for x in loaded.messages(idx[:SAMPLES])],
                    **picture(ix, ("group", g.id))})
    return JSONResponse({"page": page, "per_page": per, "total": len(loaded.manifest.review_groups),
                         "bucket_seconds": loaded.timeline.get("bucket_seconds"),
                         "start": loaded.timeline.get("start"), "undecided": undecided(loaded, d, ix),
                         "groups": out})


async def members(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    gid = int(request.path_params["gid"])
    ix = index(loaded)
    if gid not in ix.members:
        return JSONResponse({"error": "no such review group"}, status_code=404)
    page, per = _page(request, 50, 500)
    ov = c.inc.effective(loaded, c.inc.decisions(iid))
    idx = ix.members[gid]
    return JSONResponse({"group": gid, "total": len(idx), "page": page, "per_page": per,
                         "messages": [message_row(x, ov) for x in loaded.messages(idx[(page - 1) * per:page * per])]})


async def decide(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    gid = int(request.path_params["gid"])
    ix = index(loaded)
    if gid not in ix.members:
        return JSONResponse({"error": "no such review group"}, status_code=404)
    body = GroupDecision.model_validate_json(request.state.body)
    if body.verdict is None and str(gid) not in c.inc.decisions(iid).get("groups", {}):
        return JSONResponse({"error": "this group has no decision to undo"}, status_code=409)
    d = c.inc.decide(iid, "group", str(gid), body.verdict, who(request, body.by), body.note)
    return JSONResponse({"ok": True, "log": d["log"][-1], "undecided": undecided(loaded, d, ix),
                         "summary": c.inc.summary(iid, loaded, d)})


async def pictures(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    q = request.query_params
    ids = [int(x) for x in (q.get("ids") or "").split(",") if x.strip()]
    query = PicturesQuery.model_validate({"kind": q.get("kind") or "campaign", "ids": ids})
    ix = index(loaded)
    return JSONResponse({"bucket_seconds": loaded.timeline.get("bucket_seconds"),
                         "start": loaded.timeline.get("start"),
                         "pictures": {str(i): picture(ix, (query.kind, i)) for i in query.ids}})


BASE = "/api/incidents/{iid}"
routes = [
    Route(BASE + "/review-groups", incident_api(groups)),
    Route(BASE + "/review-groups/{gid:int}/messages", incident_api(members)),
    Route(BASE + "/review-groups/{gid:int}/decision", incident_api(decide, post=True), methods=["POST"]),
    Route(BASE + "/pictures", incident_api(pictures)),
]

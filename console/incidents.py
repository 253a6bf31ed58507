"""The console's incident routes: the list, one incident's overview, its timeline and its blocklist report."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.data import Loaded, message_row
from console.web import Console, api, incident_api
from pipeline.blocklist.models import BlocklistReport
from pipeline.errors import ManifestError
from pipeline.models import Verdict


def blocklist_state(report: dict[str, Any] | None) -> str:
    """The incident list's blocklist column, read from the real report model (listed first, then unknown)."""
    if report is None:
        return "not checked"
    try:
        return BlocklistReport.model_validate(report).state()
    except ValidationError:
        return "unreadable report"


async def incidents(request: Request, c: Console) -> Response:
    inc = c.inc
    out = []
    for iid in inc.ids():
        try:
            loaded = inc.load(iid)
        except ManifestError as e:  # one unreadable manifest does not hide the other incidents
            out.append({"id": iid, "status": "unreadable manifest", "error": str(e),
                        "blocklist": blocklist_state(inc.blocklists(iid))})
            continue
        row: dict[str, Any] = {"id": iid, "status": inc.status(iid, loaded),
                               "blocklist": blocklist_state(inc.blocklists(iid))}
        if loaded:
            m = loaded.manifest
            row.update(host=", ".join(m.snapshot.hosts) or None, when=loaded.last_arrival,
                       size=m.totals.messages, bytes=m.totals.bytes, totals=m.totals.model_dump())
        out.append(row)
    return JSONResponse({"incidents": out})


async def detail(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    inc = c.inc
    m = loaded.manifest
    d = inc.decisions(iid)
    ov = inc.effective(loaded, d)
    totals = {"messages": m.totals.messages, "bytes": m.totals.bytes, "campaigns": m.totals.campaigns,
              "valid": 0, "spam": 0, "review": 0}
    now = loaded.ix.verdicts(ov)
    for v in now:
        totals[v.value] += 1
    # the biggest campaigns as cards; a 100k incident has thousands of small ones, which the page asks for
    # in steps (?campaigns=N) instead of receiving a megabyte on every visit
    limit = int(request.query_params.get("campaigns") or 60)
    if not 1 <= limit <= 100_000:
        raise ValueError("campaigns must be 1..100000")
    camps = []
    for camp in sorted(m.campaigns, key=lambda camp: -camp.size)[:limit]:
        cd = d["campaigns"].get(str(camp.id))
        camps.append({**camp.model_dump(mode="json"), "triage_verdict": camp.verdict.value,
                      "verdict": cd["verdict"] if cd else camp.verdict.value, "decision": cd})
    first = [i for i, v in enumerate(now) if v is Verdict.review][:200]
    review = [message_row(x, ov) for x in loaded.messages(first)]
    groups: dict[tuple[str, str], int] = {}
    for at, rows in loaded.columns(["mail_from", "rcpt_to"]):
        for i, (mail_from, rcpt_to) in enumerate(rows):
            if now[at + i] is Verdict.valid:
                s = _domain(mail_from)
                for r in set(map(_domain, rcpt_to)) or {"?"}:
                    groups[(s, r)] = groups.get((s, r), 0) + 1
    valid = [{"sender_domain": s, "recipient_domain": r, "messages": n}
             for (s, r), n in sorted(groups.items(), key=lambda kv: -kv[1])[:100]]
    return JSONResponse({"id": iid, "host": ", ".join(m.snapshot.hosts) or None, "status": inc.status(iid, loaded),
                         "snapshot": m.snapshot.model_dump(mode="json"), "totals": totals,
                         "campaigns": camps, "campaigns_total": len(m.campaigns),
                         "accounts": [a.model_dump(mode="json") for a in m.accounts],
                         "sources": [s.model_dump(mode="json") for s in m.sources[:200]],
                         "review_first": review, "valid_groups": valid, "decisions": d["log"][-50:],
                         # read before approving: a policy that matched too little, and which policy it was
                         "warnings": m.warnings,
                         "policy": m.policy.model_dump(mode="json") if m.policy else None})


async def timeline(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    return JSONResponse(loaded.timeline)


async def blocklists(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    return JSONResponse({"report": c.inc.blocklists(iid)})


def _domain(addr: str | None) -> str:
    if addr is None:
        return "?"
    return addr.rpartition("@")[2].lower() or "<>"


BASE = "/api/incidents/{iid}"
routes = [
    Route("/api/incidents", api(incidents)),
    Route(BASE, incident_api(detail)),
    Route(BASE + "/timeline", incident_api(timeline)),
    Route(BASE + "/blocklists", incident_api(blocklists)),
]

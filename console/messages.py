"""The console's message routes: the filtered list, one message with its bytes, and a reviewer's verdict change."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.data import Loaded, message_row, message_view
from console.fields import Who
from console.web import Console, err, incident_api, who
from pipeline.models import Verdict


class VerdictChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["campaign", "message"]
    target: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    by: Who = "console"
    note: str = Field("", max_length=2000)


async def messages(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    q = request.query_params
    verdict = q.get("verdict") or None
    if verdict is not None:
        verdict = Verdict(verdict).value
    camp = q.get("campaign")
    camp_id = None if camp in (None, "") else (-1 if camp == "none" else int(camp))
    needle = (q.get("q") or "").lower()[:200]
    page = int(q.get("page") or 1)
    per = int(q.get("per_page") or 50)
    if page < 1 or not 1 <= per <= 500:
        raise ValueError("page must be >= 1 and per_page 1..500")
    ov = c.inc.effective(loaded, c.inc.decisions(iid))
    found = loaded.search(needle) if needle else None
    want = None if verdict is None else Verdict(verdict)
    ix = loaded.ix
    now = ix.verdicts(ov) if want is not None else None
    hits = [i for i in range(len(ix))
            if (now is None or now[i] is want) and (camp_id is None or ix.campaign[i] == camp_id)
            and (found is None or i in found)]
    start = (page - 1) * per
    return JSONResponse({"total": len(hits), "page": page, "per_page": per,
                         "messages": [message_row(x, ov) for x in loaded.messages(hits[start:start + per])]})


async def message(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    pos = loaded.ix.position(request.path_params["mid"])
    if pos is None:
        return err(404, "no such message")
    m = loaded.messages([pos])[0]
    ov = c.inc.effective(loaded, c.inc.decisions(iid))
    return JSONResponse(message_view(m, c.inc.raw(iid, m), ov.get(m.id, m.verdict)))


async def verdicts(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    body = VerdictChange.model_validate_json(request.state.body)
    if body.kind == "campaign":
        if not any(str(camp.id) == body.target for camp in loaded.manifest.campaigns):
            return err(404, "no such campaign")
    elif loaded.ix.position(body.target) is None:
        return err(404, "no such message")
    d = c.inc.decide(iid, body.kind, body.target, body.verdict, who(request, body.by), body.note)
    return JSONResponse({"ok": True, "log": d["log"][-1], "summary": c.inc.summary(iid, loaded)})


BASE = "/api/incidents/{iid}"
routes = [
    Route(BASE + "/messages", incident_api(messages)),
    Route(BASE + "/messages/{mid}", incident_api(message)),
    Route(BASE + "/verdicts", incident_api(verdicts, post=True), methods=["POST"]),
]

"""The console's approval routes: what approving would do, the approval itself, and the agents' receipts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from console.data import Loaded
from console.fields import Who
from console.web import Console, err, incident_api, who


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    by: Who = "console"


async def summary(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    return JSONResponse({**c.inc.summary(iid, loaded), "approvals": c.inc.approvals(iid)})


async def approve(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    body = ApproveBody.model_validate_json(request.state.body)
    done = c.inc.approve(iid, loaded, who(request, body.by), body.digest)
    if done is None:
        return err(409, "the decisions changed since this summary; review the new summary and confirm again")
    key, new = done
    s = c.inc.summary(iid, loaded)
    return JSONResponse({"key": key, "new": new, "summary": s}, status_code=201 if new else 200)


async def receipts(request: Request, c: Console, iid: str, loaded: Loaded) -> Response:
    return JSONResponse(c.inc.receipts(iid))


BASE = "/api/incidents/{iid}"
routes = [
    Route(BASE + "/approval-summary", incident_api(summary)),
    Route(BASE + "/approve", incident_api(approve, post=True), methods=["POST"]),
    Route(BASE + "/receipts", incident_api(receipts)),
]

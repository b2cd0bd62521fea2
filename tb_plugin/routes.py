"""The HTTP API of DESIGN.md as data: one table of routes, each a plain function of the core and a `Call`, and
`serve`, which checks a request and answers it. Framework-free.

The TensorBoard plugin (werkzeug, under ``/data/plugin/bidviz/``) and ``bidviz serve`` (Starlette, under ``/api/``)
are thin shells: each turns its framework's request into a `security.Request` (headers, the peer's uid, the control
token) and a `Call` (query, body, who sent it), calls `serve` with the route of the table, and turns the `Reply`
back into its framework's response. So the checks, the status codes (202 for a pending response) and the error
bodies (``{"error": "<what to do>"}``) are the same in both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bidviz import protocol
from bidviz.errors import BIDVizError, PublicError
from bidviz.tb_plugin import security
from bidviz.tb_plugin.core import PENDING, ControlPlane

__all__ = ["OWNER_NAME", "ROUTES", "Call", "Reply", "Route", "check", "error_reply", "serve"]

logger = logging.getLogger(__name__)


def login_name(uid: int | None = None) -> str:
    """The user's login name (`uid 1000` when the system has none for it): who the journal says sent a command."""
    uid = os.getuid() if uid is None else uid
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


#: every data route passes the owner check, so a command sent through HTTP is this user's (`tab:alice`)
OWNER_NAME = login_name()


@dataclass(frozen=True)
class Call:
    """What a route needs of one request, whatever framework received it."""

    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: the command's `sender` field: which client, and the user the owner check proved the request comes from
    sender: str = "http"
    #: this server's CSRF token, for `GET csrf`
    csrf: str = ""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """`name` is the path under the API's root (``runs``, ``state``...); `answer` returns JSON data or a Reply."""

    name: str
    answer: Callable[[ControlPlane, Call], Any]
    method: str = "GET"


def _data(core: ControlPlane, call: Call) -> Reply:
    q = call.query
    body, content_type, filename = core.data(q.get("run"), q.get("tag"), q.get("format", "json"))
    disposition = "attachment" if q.get("download") else "inline"
    return Reply(200, body, content_type, (("Content-Disposition", f'{disposition}; filename="{filename}"'),))


ROUTES: tuple[Route, ...] = (
    Route("runs", lambda core, call: core.runs()),
    Route("state", lambda core, call: core.state(call.query.get("run"))),
    Route(
        "journal",
        lambda core, call: core.journal(call.query.get("run"), call.query.get("limit", 500), call.query.get("since")),
    ),
    Route("csrf", lambda core, call: {"token": call.csrf}),
    Route("command", lambda core, call: core.command(call.body, sender=call.sender), "POST"),
    Route("check", lambda core, call: core.check(call.body), "POST"),
    Route("response", lambda core, call: core.response(call.query.get("run"), call.query.get("id"))),
    Route("kinds", lambda core, call: core.kinds()),
    Route("tags", lambda core, call: core.scalar_tags(call.query.get("run"))),
    Route("data", _data),
)


def error_reply(error: BIDVizError) -> Reply:
    return Reply(error.http_status, protocol.dumps({"error": str(error)}))


def check(guard: security.Guard, route_method: str, request: security.Request, *, owner: bool = True) -> None:
    """The method, then every check of `security.Guard`; a refusal is a PublicError (logged: someone tried)."""
    if request.method != route_method and not (route_method == "GET" and request.method == "HEAD"):
        raise PublicError(405, f"use {route_method} for this route; received {request.method}")
    try:
        guard.check(request, owner=owner)
    except BIDVizError as e:
        logger.warning("BIDViz refused %s from %s: %s", request.method, request.peer or "?", e)
        raise


def serve(
    guard: security.Guard, route: Route, core: Callable[[], ControlPlane], request: security.Request, call: Call
) -> Reply:
    """Check `request`, then answer `call` with `route`: JSON (202 for a pending response), or the error's status
    and ``{"error"}``. `core` is called only once the request passed."""
    try:
        check(guard, route.method, request)
        result = route.answer(core(), call)
    except BIDVizError as e:
        return error_reply(e)
    if isinstance(result, Reply):
        return result
    pending = isinstance(result, dict) and result.get("status") == PENDING
    return Reply(202 if pending else 200, protocol.dumps(result))

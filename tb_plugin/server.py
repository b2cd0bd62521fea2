"""`bidviz serve`: the standalone live server, a thin Starlette shell over the same core and route table as the
TensorBoard plugin, plus what only it can do: Server-Sent Events per run (`live`).

Layout: ``/`` is the page (the tab's own code in live mode), ``/api/<route>`` the routes of `routes.ROUTES`,
``/api/events?run=`` a run's live stream, ``/api/static/<name>`` the page's assets. Every request passes the same
`security.Guard` as the plugin's (Host, Origin, Sec-Fetch-Site, JSON and CSRF for POSTs); every ``/api/`` route but
the assets also passes the owner check: the loopback peer's uid from the kernel (`peer`), or the ``X-BIDViz-Token``
header. On a non-loopback bind the token is required on every such request, the live stream included, whoever the
peer is (`require_token`): it is the server's own (``--token``, or one made at start and printed as a login link).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from bidviz.errors import BIDVizError, PublicError
from bidviz.tb_plugin import peer, security
from bidviz.tb_plugin.assets import STATIC_TYPES, static_files
from bidviz.tb_plugin.control_token import TOKEN_HEADER
from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns
from bidviz.tb_plugin.live import Hub
from bidviz.tb_plugin.routes import OWNER_NAME, ROUTES, Call, Reply, check, error_reply, serve

__all__ = ["PAGE", "create_app"]

logger = logging.getLogger(__name__)

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<base href="api/">
<title>BIDViz</title>
<link rel="icon" href="data:,">
<script type="module" src="static/page.js"></script>
</head>
<body class="bidviz-serve"></body>
</html>
"""

#: our pages load only our own code and talk only to us; no page may frame them
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(
    logdir: str | os.PathLike[str],
    *,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    token: str | None = None,
    require_token: bool = False,
) -> Starlette:
    """The server's ASGI app over `logdir`. `token`: the control token this server accepts (default: the user's
    own, as `bidviz tab-link` makes it). `require_token`: ignore the peer's uid, so every request must carry the
    token (binding a non-loopback address)."""
    if require_token and not token:
        raise ValueError("require_token needs the token: a server on a non-loopback address always takes one")
    guard = security.Guard(allowed_hosts, owner_token=(lambda: token) if token else None)
    core = ControlPlane(os.fspath(logdir), DirectoryRuns(logdir))
    hub = Hub()
    assets = static_files()

    def request_of(request: Request, *, owner: bool = True) -> security.Request:
        client, server = request.scope.get("client"), request.scope.get("server")
        uid = None
        if owner and not require_token and client and server:
            uid = peer.peer_uid(str(client[0]), int(client[1]), int(server[1]), str(server[0]))
        return security.Request(
            method=request.method,
            host=request.headers.get("host", ""),
            origin=request.headers.get("origin"),
            sec_fetch_site=request.headers.get("sec-fetch-site"),
            content_type=request.headers.get("content-type"),
            csrf=request.headers.get(security.CSRF_HEADER),
            peer_uid=uid,
            control_token=request.headers.get(TOKEN_HEADER),
            peer=f"{client[0]}:{client[1]}" if client else "",
        )

    def respond(reply: Reply) -> Response:
        return Response(reply.body, reply.status, {**HEADERS, **dict(reply.headers)}, media_type=reply.content_type)

    def endpoint(route: Any) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Response:
            body = await request.body() if request.method == "POST" else b""
            call = Call(query=request.query_params, body=body, sender=f"serve:{OWNER_NAME}", csrf=guard.token)
            checked = request_of(request)  # reads /proc/net/tcp: before the thread hop, while the socket is open
            reply = await run_in_threadpool(serve, guard, route, lambda: core, checked, call)
            return respond(reply)

        return answer

    async def events(request: Request) -> Response:
        try:
            check(guard, "GET", request_of(request))
            run = request.query_params.get("run")
            run_dir = await run_in_threadpool(core.resolve, run)
        except BIDVizError as e:
            return respond(error_reply(e))
        feed = hub.feed(str(run), run_dir)
        client = await feed.subscribe()

        async def stream() -> Any:
            try:
                async for frame in client.frames():
                    yield frame
            finally:
                feed.unsubscribe(client)

        headers = {**HEADERS, "Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    def open_check(request: Request) -> Response | None:
        try:
            check(guard, "GET", request_of(request, owner=False), owner=False)
        except BIDVizError as e:
            return respond(error_reply(e))
        return None

    async def page(request: Request) -> Response:
        return open_check(request) or Response(PAGE, 200, HEADERS, media_type="text/html")

    async def static(request: Request) -> Response:
        refused = open_check(request)
        if refused:
            return refused
        name = request.path_params["name"]
        data = assets.get(name)
        if data is None:
            return respond(error_reply(PublicError(404, f"no such BIDViz asset: {name[:80]!r}")))
        return Response(data, 200, HEADERS, media_type=STATIC_TYPES[name[name.rfind(".") :]])

    routes = [
        StarletteRoute("/", page, methods=["GET"]),
        StarletteRoute("/api/static/{name:path}", static, methods=["GET"]),
        StarletteRoute("/api/events", events, methods=["GET"]),
        *(StarletteRoute(f"/api/{r.name}", endpoint(r), methods=["GET", "POST", "PUT", "DELETE"]) for r in ROUTES),
    ]
    app = Starlette(routes=routes)
    app.state.hub = hub
    app.state.guard = guard
    return app

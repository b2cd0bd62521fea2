"""The BIDViz TensorBoard plugin: the routes of DESIGN.md as a thin werkzeug shell over `core.ControlPlane`.

Each route checks the request (`security.Guard`), calls one core method and answers JSON. The shell fills in who
sent the request: the uid owning the client's socket (`peer.peer_uid`, from the kernel's socket table, for a
loopback connection on Linux) and the ``X-BIDViz-Token`` header; only the tab's static code is served to anyone. Every
`bidviz.errors.BIDVizError` the guard or the core raises becomes a `RouteError` (a TensorBoard `PublicError`) with
its `http_status` and the body ``{"error": "<what to do>"}``, so TensorBoard's own error handling serves it.
Runs come from `context.data_provider`, which works with the Rust data server and the Python loader alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tensorboard import errors
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from bidviz.errors import BIDVizError
from bidviz.tb_plugin import peer, security
from bidviz.tb_plugin.assets import STATIC_TYPES, static_files
from bidviz.tb_plugin.control_token import TOKEN_HEADER
from bidviz.tb_plugin.core import ControlPlane
from bidviz.tb_plugin.routes import OWNER_NAME, ROUTES, Call, Route, check, serve

logger = logging.getLogger(__name__)

PLUGIN_NAME = "bidviz"


class RouteError(errors.PublicError):
    """A refused or failed request as TensorBoard answers it: `http_code` and our JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(json.dumps({"error": message}))
        self.http_code = status
        self.message = message

    @classmethod
    def of(cls, error: BIDVizError) -> RouteError:
        return cls(error.http_status, str(error))


def peer_of(environ: dict[str, Any]) -> int | None:
    """The uid of the user whose socket sent this request (`peer.peer_uid` on the WSGI environ: REMOTE_ADDR,
    REMOTE_PORT, SERVER_PORT, and the connection's own address when werkzeug's server passes its socket), or None
    when it cannot be told."""
    try:
        remote_port = int(environ["REMOTE_PORT"])
        server_port = int(environ["SERVER_PORT"])
    except (KeyError, TypeError, ValueError):
        return None
    local_addr = None
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            local_addr, server_port = sock.getsockname()[:2]
        except (OSError, AttributeError, TypeError, ValueError):
            local_addr = None
    return peer.peer_uid(str(environ.get("REMOTE_ADDR", "")), remote_port, server_port, local_addr)


class DataProviderRuns:
    """Runs and scalar tags as TensorBoard itself sees them, through `context.data_provider`."""

    def __init__(self, data_provider: Any, environ: dict[str, Any]) -> None:
        from tensorboard import plugin_util

        self._provider = data_provider
        self._ctx = plugin_util.context(environ)
        self._eid = plugin_util.experiment_id(environ)

    def run_names(self) -> list[str]:
        if self._provider is None:
            return []
        return [r.run_name for r in self._provider.list_runs(self._ctx, experiment_id=self._eid)]

    def scalar_tags(self, run: str) -> list[str] | None:
        if self._provider is None:
            return None
        listing = self._provider.list_scalars(
            self._ctx,
            experiment_id=self._eid,
            plugin_name="scalars",
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        )
        return sorted(listing.get(run, {}))


class BIDVizPlugin(base_plugin.TBPlugin):
    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._context = context
        flags = context.flags
        hosts = security.parse_hosts(getattr(flags, "bidviz_allowed_hosts", None))
        bound = (getattr(flags, "host", None) or "").strip()
        if bound and bound not in ("0.0.0.0", "::", "*"):
            hosts.append(bound)  # `--host NAME` means the user opens TensorBoard by that name
        self.guard = security.Guard(hosts)
        self._static: dict[str, bytes] | None = None

    # -- plugin contract -----------------------------------------------------------------------------------------

    def get_plugin_apps(self) -> dict[str, Callable[..., Any]]:
        apps: dict[str, Callable[..., Any]] = {"/static/*": self._serve_static}
        apps.update({f"/{route.name}": self._app(route) for route in ROUTES})
        return apps

    def is_active(self) -> bool:
        return True  # the tab explains how to attach a bridge when no run has one

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name="BIDViz", disable_reload=False)

    # -- the shell ------------------------------------------------------------------------------------------------

    def core(self, environ: dict[str, Any]) -> ControlPlane:
        return ControlPlane(self._context.logdir, DataProviderRuns(self._context.data_provider, environ))

    def _request(self, request: wrappers.Request, *, owner: bool = True) -> security.Request:
        """What `security.Guard` checks of a werkzeug request; the peer's uid only where the owner is checked."""
        return security.Request(
            method=request.method,
            host=request.headers.get("Host", ""),
            origin=request.headers.get("Origin"),
            sec_fetch_site=request.headers.get("Sec-Fetch-Site"),
            content_type=request.headers.get("Content-Type"),
            csrf=request.headers.get(security.CSRF_HEADER),
            peer_uid=peer_of(request.environ) if owner else None,
            control_token=request.headers.get(TOKEN_HEADER),
            peer=f"{request.environ.get('REMOTE_ADDR', '?')}:{request.environ.get('REMOTE_PORT', '?')}",
        )

    def _app(self, route: Route) -> Callable[..., Any]:
        @wrappers.Request.application
        def app(request: wrappers.Request) -> wrappers.Response:
            call = Call(
                query=request.args,
                body=request.get_data() if route.method == "POST" else b"",
                sender=f"tab:{OWNER_NAME}",
                csrf=self.guard.token,
            )
            reply = serve(self.guard, route, lambda: self.core(request.environ), self._request(request), call)
            return http_util.Respond(
                request, reply.body, reply.content_type, code=reply.status, headers=list(reply.headers)
            )

        return app

    @wrappers.Request.application
    def _serve_static(self, request: wrappers.Request) -> wrappers.Response:
        try:  # the tab's code holds no secret, so a stranger's tab can still say what to do
            check(self.guard, "GET", self._request(request, owner=False), owner=False)
        except BIDVizError as e:
            raise RouteError.of(e) from None
        if self._static is None:
            self._static = static_files()
        name = request.path.rsplit("/", 1)[-1]
        data = self._static.get(name)
        if data is None or "/static/" + name not in request.path:
            raise RouteError(404, f"no such BIDViz asset: {name!r}")
        content_type = STATIC_TYPES[name[name.rfind(".") :]]
        return http_util.Respond(request, data, content_type)

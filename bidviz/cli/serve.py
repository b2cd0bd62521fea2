"""`bidviz serve`: the standalone live server (`bidviz.tb_plugin.server`) on uvicorn.

On a loopback address (the default) it serves the user who runs it, as the TensorBoard tab does: the kernel says
whose browser connected. Any other address requires a token on every request: `--token`, or a random one made at
start; the login link printed carries it in the URL's fragment, which the browser never sends to a server.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
from typing import Any

from bidviz.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import say
from bidviz.cli.tablink import url_host

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6007
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback_host(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(opts: argparse.Namespace) -> int:
    try:
        import uvicorn

        from bidviz.tb_plugin.server import create_app
    except ImportError as e:
        raise CliError(
            f"bidviz serve needs starlette and uvicorn ({e}): pip install 'tensorboard-bidviz[server]'", EXIT_USAGE
        ) from None
    if not os.path.isdir(opts.logdir):
        raise CliError(f"--logdir {opts.logdir} is not a directory; give the directory your runs write into", 2)
    if bool(opts.ssl_certfile) != bool(opts.ssl_keyfile):
        raise CliError("TLS needs both --ssl-certfile and --ssl-keyfile", EXIT_USAGE)
    host = opts.host.strip()
    shown = url_host(host)
    exposed = not is_loopback_host(host)
    token = opts.token
    if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
        raise CliError("--token must be at least 16 characters, without spaces (e.g. from `openssl rand -hex 24`)", 2)
    if exposed and token is None:
        token = secrets.token_urlsafe(32)
    hosts = list(opts.allowed_hosts or [])
    if host in WILDCARDS:
        hosts += [socket.gethostname(), socket.getfqdn()]
        shown = socket.gethostname()
    elif not is_loopback_host(host):
        hosts.append(host)
    app = create_app(opts.logdir, allowed_hosts=hosts, token=token, require_token=exposed)
    scheme = "https" if opts.ssl_certfile else "http"
    url = f"{scheme}://{shown}:{opts.port}/"
    if token and exposed:
        say(f"BIDViz serves {opts.logdir} at {url} ; open this login link (it holds the token):")
        say(f"{url}#token={token}")
        say("Whoever holds the link can read and steer every run of this log directory.", err=True)
    else:
        say(f"BIDViz serves {opts.logdir} at {url}")
    uvicorn.run(
        app,
        host=host or "0.0.0.0",
        port=opts.port,
        log_level=opts.log_level,
        ssl_certfile=opts.ssl_certfile,
        ssl_keyfile=opts.ssl_keyfile,
        proxy_headers=False,  # the peer is the socket's: a header must not pass for a loopback user
        server_header=False,
    )
    return EXIT_OK


def add_serve_parser(sub: Any, port_type: Any) -> None:
    what = "serve a live page of every run under LOGDIR: charts pushed as they are written, and steering"
    serve = sub.add_parser("serve", help=what, description=what)
    serve.set_defaults(handler=cmd_serve)
    serve.add_argument("--logdir", required=True, metavar="DIR", help="the directory your runs write into")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, loopback only)")
    serve.add_argument("--port", type=port_type, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument(
        "--token",
        help="the token requests must carry (default on a non-loopback --host: a random one, printed as a login link)",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=lambda text: [h for h in text.split(",") if h.strip()],
        metavar="HOSTS",
        help="comma-separated names the page may be reached under besides localhost and --host (DNS rebinding)",
    )
    serve.add_argument("--ssl-certfile", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", metavar="FILE", help="and this private key (PEM)")
    serve.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))

"""`bidviz tab-link`: the link that opens the BIDViz tab with this user's control token.

A TensorBoard that cannot tell who sent a request (not a loopback connection on Linux: `--bind_all`, a proxy on
another host) serves BIDViz only to requests carrying the control token of the user it runs as
(`bidviz.tb_plugin.control_token`, a 0600 file created here on first use). The link puts the token in the URL's
fragment (``#bidviz&token=...``), which the browser never sends to a server, so it stays out of access logs; the tab
reads it, keeps it for the browser tab and sends it as a header.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from bidviz.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import say
from bidviz.tb_plugin.control_token import TokenFileError, ensure_token, token_path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6006
_HOST = re.compile(r"[A-Za-z0-9._:\[\]%-]+")


def url_host(host: str) -> str:
    """A host as a URL spells it: a bare IPv6 address gets brackets; anything that is not a host name is refused."""
    host = host.strip()
    if not _HOST.fullmatch(host):
        raise CliError(
            f"--host expects a host name or address, e.g. 127.0.0.1 or box.lan; received {host!r}", EXIT_USAGE
        )
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def base_url(opts: argparse.Namespace) -> str:
    """TensorBoard's address: `--url` as given (without fragment), else http://HOST:PORT/."""
    if opts.url:
        parts = urlsplit(opts.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(
                f"--url expects TensorBoard's address, e.g. https://box.lan/tb/; received {opts.url!r}", EXIT_USAGE
            )
        path = parts.path if parts.path.endswith("/") else parts.path + "/"  # TensorBoard's page, not a redirect
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return f"http://{url_host(opts.host)}:{opts.port}/"


def cmd_tab_link(opts: argparse.Namespace) -> int:
    base = base_url(opts)
    try:
        token = ensure_token()
    except TokenFileError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    say(f"{base}#bidviz&token={token}")
    say(
        f"Open it in your browser: the BIDViz tab keeps the token (from {token_path()}) for that browser tab. Keep "
        "the link to yourself: whoever holds it can steer your runs.",
        err=True,
    )
    return EXIT_OK

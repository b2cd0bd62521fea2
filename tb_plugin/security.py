"""Request checks every HTTP shell applies before the control-plane core does anything.

TensorBoard has no authentication, no CSRF defence and no Host check on plugin routes, and a command can run code
inside training, so all of this is ours:

- ``Host`` must be one of the allowed hosts (DNS rebinding: a hostile page whose name resolves to 127.0.0.1 is
  same-origin to the browser, but its requests carry its own name as Host);
- a present ``Origin`` must be this server's own, and a present ``Sec-Fetch-Site`` must be ``same-origin`` (or
  ``none`` for a GET the user typed or bookmarked);
- a POST must be ``Content-Type: application/json`` (no CORS-simple form post can send that) and carry the
  ``X-BIDViz-CSRF`` header equal to the token of ``GET csrf`` (which a cross-origin page cannot read).

Framework-free: the shells pass header values in, a `bidviz.errors.PublicError` (with its `http_status`) comes out.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from bidviz.errors import PublicError

CSRF_HEADER = "X-BIDViz-CSRF"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _hostname(host: str) -> str:
    """The name part of a Host header or netloc, lower-cased: 'LOCALHOST:6006' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def normalize_host(name: str) -> str:
    """An allowed-host entry as Host headers spell it: bare IPv6 addresses get their brackets."""
    name = name.strip().lower()
    try:
        if ipaddress.ip_address(name).version == 6:
            return f"[{name}]"
    except ValueError:
        pass
    return _hostname(name)


def parse_hosts(flag: str | None) -> list[str]:
    """The ``--bidviz_allowed_hosts`` value, comma-separated, as host names."""
    return [normalize_host(h) for h in (flag or "").split(",") if h.strip()]


@dataclass(frozen=True)
class Request:
    """What the checks need of one HTTP request, whatever framework received it."""

    method: str
    host: str
    origin: str | None = None
    sec_fetch_site: str | None = None
    content_type: str | None = None
    csrf: str | None = None


class Guard:
    """Holds the allowed hosts and this server's CSRF token; `check` refuses what must not pass."""

    def __init__(self, allowed_hosts: Iterable[str] = (), *, token: str | None = None) -> None:
        self.allowed_hosts = frozenset([*DEFAULT_HOSTS, *(normalize_host(h) for h in allowed_hosts if h)])
        self.token = token or secrets.token_urlsafe(32)

    def check(self, req: Request) -> None:
        host = _hostname(req.host or "")
        if host not in self.allowed_hosts:
            raise PublicError(
                403,
                f"Host {req.host!r} is not allowed (allowed: {', '.join(sorted(self.allowed_hosts))}). Open BIDViz "
                "as http://localhost:PORT or http://127.0.0.1:PORT, or start TensorBoard with "
                f"--bidviz_allowed_hosts={host or 'NAME'} if you reach it by that name on purpose",
            )
        if req.origin is not None and req.origin != "null":
            origin = urlsplit(req.origin)
            if origin.scheme not in ("http", "https") or origin.netloc.lower() != (req.host or "").strip().lower():
                raise PublicError(
                    403,
                    f"cross-origin request refused: Origin {req.origin!r} is not this server ({req.host}); "
                    "use the BIDViz tab served by this TensorBoard",
                )
        elif req.origin == "null":
            raise PublicError(403, "request from an opaque origin (Origin: null) refused; use the BIDViz tab")
        site = (req.sec_fetch_site or "").strip().lower()
        allowed_sites = ("same-origin",) if req.method != "GET" else ("same-origin", "none")
        if site and site not in allowed_sites:
            raise PublicError(
                403,
                f"request refused: Sec-Fetch-Site is {site!r}, not same-origin; only pages of this TensorBoard may "
                "call BIDViz",
            )
        if req.method in ("GET", "HEAD"):
            return
        media = (req.content_type or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise PublicError(
                415,
                f"a POST must be Content-Type: application/json; received {req.content_type or 'none'!r}",
            )
        if not req.csrf:
            raise PublicError(403, f"missing {CSRF_HEADER} header: GET csrf first and send its token with every POST")
        if not hmac.compare_digest(req.csrf.encode(), self.token.encode()):
            raise PublicError(
                403,
                f"wrong {CSRF_HEADER} token (TensorBoard may have restarted): GET csrf again and resend",
            )

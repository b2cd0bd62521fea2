"""Request checks every HTTP shell applies before the control-plane core does anything.

TensorBoard has no authentication, no CSRF defence and no Host check on plugin routes, and a command can run code
inside training, so all of this is ours:

- ``Host`` must be one of the allowed hosts (DNS rebinding: a hostile page whose name resolves to 127.0.0.1 is
  same-origin to the browser, but its requests carry its own name as Host);
- a present ``Origin`` must be this server's own, and a present ``Sec-Fetch-Site`` must be ``same-origin`` (or
  ``none`` for a GET the user typed or bookmarked);
- a POST must be ``Content-Type: application/json`` (no CORS-simple form post can send that) and carry the
  ``X-BIDViz-CSRF`` header equal to the token of ``GET csrf`` (which a cross-origin page cannot read);
- every data route (all but the tab's own static code) must come from the owner, the user TensorBoard runs as,
  whose uid also owns every mailbox: the CSRF token stops foreign web pages, not other users of the same machine,
  who can connect to 127.0.0.1 too. The sender is the owner when the kernel says the peer's socket is the owner's
  (`peer.peer_uid`, Linux loopback) or when the request carries the owner's control token (`control_token`), the
  only proof left when the peer cannot be told (another host, a proxy, no `/proc/net/tcp`).

Framework-free: the shells pass header values and the peer's uid in, a `bidviz.errors.PublicError` (with its
`http_status`) comes out.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from bidviz.errors import PublicError
from bidviz.tb_plugin import control_token
from bidviz.tb_plugin.control_token import TOKEN_HEADER

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
    #: the uid owning the client's socket (`peer.peer_uid`), None when it cannot be told
    peer_uid: int | None = None
    #: the ``X-BIDViz-Token`` header
    control_token: str | None = None
    #: where the request came from, for messages only (``127.0.0.1:51234``)
    peer: str = ""


def _user(uid: int) -> str:
    """'uid 1000 (alice)', or 'uid 1000' when the name is unknown."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


class Guard:
    """Holds the allowed hosts, this server's CSRF token, its owner's uid and a source of the owner's control token;
    `check` refuses what must not pass."""

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        token: str | None = None,
        owner_uid: int | None = None,
        owner_token: Callable[[], str | None] | None = None,
    ) -> None:
        self.allowed_hosts = frozenset([*DEFAULT_HOSTS, *(normalize_host(h) for h in allowed_hosts if h)])
        self.token = token or secrets.token_urlsafe(32)
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        #: the owner's control token, read when needed (None: there is none yet); default: the owner's token file
        self.owner_token = owner_token if owner_token is not None else control_token.TokenSource()

    def check(self, req: Request, *, owner: bool = True) -> None:
        """Refuse `req` unless it passes every check of the module docstring. `owner=False` only for what holds
        nothing secret and steers nothing (the tab's static code), so a stranger's tab can still say what to do."""
        self.check_origin(req)
        if owner:
            self.check_owner(req)
        if req.method not in ("GET", "HEAD"):
            self.check_post(req)

    def check_owner(self, req: Request) -> None:
        """Pass the owner only: a peer the kernel says is the owner's, or a request with the owner's token."""
        if req.peer_uid is not None and req.peer_uid == self.owner_uid:
            return
        owner = _user(self.owner_uid)
        expected = self.owner_token() if req.control_token else None  # a TokenFileError says what to fix
        if control_token.matches(req.control_token, expected):
            return
        link = "run `bidviz tab-link` as that user on the TensorBoard machine and open the link it prints"
        if req.peer_uid is not None:
            raise PublicError(
                403,
                f"request from {_user(req.peer_uid)} refused: this TensorBoard runs as {owner}, and only that user "
                "may read or steer its runs through BIDViz (a command runs code inside training). Start your own "
                f"TensorBoard to steer your own runs; if you are {owner} behind a proxy, {link}",
            )
        where = f" (from {req.peer})" if req.peer else ""
        if not req.control_token:
            raise PublicError(
                403,
                f"BIDViz cannot tell who sent this request{where}: it is not a loopback connection whose user the "
                f"kernel reports, so it must carry the control token of {owner} in the {TOKEN_HEADER} header: {link}",
            )
        if expected is None:
            raise PublicError(
                403, f"{owner} has no control token yet, so the {TOKEN_HEADER} sent{where} is not it: {link}"
            )
        raise PublicError(
            403,
            f"wrong {TOKEN_HEADER} control token{where}: it is not the token of {owner} (it may have been "
            f"replaced); {link}",
        )

    def check_origin(self, req: Request) -> None:
        """Host, Origin and Sec-Fetch-Site: the request comes through this server's own name, from its own pages."""
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

    def check_post(self, req: Request) -> None:
        """A POST is JSON and carries this server's CSRF token."""
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

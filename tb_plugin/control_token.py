"""The per-user control token: the proof of ownership when the peer of a request cannot be told from the kernel.

On Linux, a loopback request's sender is known by its uid (`peer.peer_uid`). A request that comes from elsewhere
(TensorBoard with ``--bind_all``, a reverse proxy on another host, a system without `/proc/net/tcp`) must carry this
token in the ``X-BIDViz-Token`` header. It is a secret of the user who runs TensorBoard, kept in
``$XDG_CONFIG_HOME/bidviz/token`` (``~/.config/bidviz/token`` by default), mode 0600; ``bidviz tab-link`` creates it
on first use and prints a link that hands it to the tab (in the URL's fragment, which never reaches a server log).

A token file others could read (or replace) proves nothing, so one that is not a regular file of this user with
mode 0600 or stricter is refused with a message saying how to fix it; it is never used nor silently replaced.
Framework-free; standard library only (the CLI imports it).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from bidviz.errors import PublicError

TOKEN_HEADER = "X-BIDViz-Token"
TOKEN_BYTES = 32
MAX_TOKEN_FILE = 4096


class TokenFileError(PublicError):
    """The token file exists but cannot be trusted or read; the message names the file and the fix."""

    default_type = "TokenFileError"

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


def token_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/bidviz/token``, or ``~/.config/bidviz/token`` when that variable is unset, empty or not
    an absolute path (as the XDG base directory specification says)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "bidviz" / "token"
    root = Path(env.get("HOME") or os.path.expanduser("~")) / ".config"
    return root / "bidviz" / "token"


def _trusted(path: Path, st: os.stat_result) -> None:
    """Refuse a token file that is not a regular file owned by this user, or that others can read or write."""
    uid = os.getuid()
    if not stat.S_ISREG(st.st_mode):
        raise TokenFileError(f"{path} is not a regular file; remove it and run `bidviz tab-link` to make a new token")
    if st.st_uid != uid:
        raise TokenFileError(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid}), so it proves nothing; remove it and "
            "run `bidviz tab-link` to make a new token"
        )
    if st.st_mode & 0o077:
        raise TokenFileError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: other users may have read the control token, so it is "
            f"refused; remove it (`rm {path}`) and run `bidviz tab-link` to make a new one (mode 0600)"
        )


def read_token(path: Path | None = None) -> str | None:
    """The token in `path` (default `token_path()`), or None when there is no such file yet. A file that cannot be
    trusted (see the module docstring) or read raises `TokenFileError`."""
    path = token_path() if path is None else path
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise TokenFileError(
                f"{path} is a symlink; the control token must be a plain file: remove it and run `bidviz tab-link`"
            ) from None
        raise TokenFileError(f"cannot read the control token {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        _trusted(path, os.fstat(f.fileno()))  # the file opened, not whatever the name points to now
        text = f.read(MAX_TOKEN_FILE + 1)
    token = text.decode("ascii", "replace").strip()
    if not token or len(text) > MAX_TOKEN_FILE or any(c.isspace() for c in token):
        raise TokenFileError(f"{path} does not hold a control token; remove it and run `bidviz tab-link` for a new one")
    return token


def ensure_token(path: Path | None = None) -> str:
    """The user's token, created (random, mode 0600, its directory 0700) when there is none yet. It is written to a
    temporary file, then linked into place, so a concurrent reader sees the whole token or no file."""
    path = token_path() if path is None else path
    token = read_token(path)
    if token is not None:
        return token
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as e:
        raise TokenFileError(f"cannot create the control token {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if a concurrent first use got there first: that token wins
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    except OSError as e:
        raise TokenFileError(f"cannot create the control token {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    token = read_token(path)
    if token is None:
        raise TokenFileError(f"{path} vanished while it was being created; run `bidviz tab-link` again")
    return token


def matches(given: str | None, expected: str | None) -> bool:
    """Whether `given` is the token, compared in constant time; False when either is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


class TokenSource:
    """The current user's token as the plugin checks it: read from its file when first needed and again whenever
    the file changes (so `bidviz tab-link` run after TensorBoard started works at once); never created here."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = token_path() if path is None else path
        self._seen: tuple[int, ...] | None = None
        self._token: str | None = None

    def __call__(self) -> str | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            self._seen, self._token = None, None
            return None
        except OSError as e:
            raise TokenFileError(f"cannot read the control token {self.path}: {e.strerror or e}") from None
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: chmod and chown too
        if seen != self._seen:
            self._seen, self._token = None, None
            self._token = read_token(self.path)
            self._seen = seen
        return self._token

"""Protocol v1: the command and response schema shared by the bridge and every client.

Depends on nothing of ours but `bidviz.kinds` (the table of command kinds) and `bidviz.errors`.
Commands parse into small frozen dataclasses; every validation error names what was received and what is expected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import kinds
from .errors import ProtocolError

VERSION = 1
MAX_COMMAND_BYTES = 256 * 1024
#: The shared signing secret, for the bridge and every client alike.
SECRET_ENV = "BIDVIZ_SECRET"

#: every command kind by its wire name (the table lives in `bidviz.kinds`)
KINDS = kinds.KINDS
METRIC_KINDS = kinds.METRIC_KINDS
STATUSES = ("applied", "rejected", "failed")
check_name = kinds.check_name

_ID_RE = re.compile(r"[0-9a-f]{32}")
_FILE_RE = re.compile(r"(\d{1,16})-([0-9a-f]{32})\.json")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_EPOCH = 1e11  # seconds: year 5138; anything later in a time field is a mistake or an attack


def new_id() -> str:
    return uuid.uuid4().hex


def is_command_id(text: object) -> bool:
    return isinstance(text, str) and _ID_RE.fullmatch(text) is not None


class Clock:
    """Epoch seconds, each at least one millisecond after the previous one it gave, so that commands made in a
    row sort (by their inbox file names) in the order they were made. One per sender; thread-safe."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._last_ms = ms
            return ms / 1000  # whole milliseconds: the inbox name's prefix is exactly this, never rounded down


_clock = Clock()


def env_secret() -> str | None:
    """The signing secret from the environment (`BIDVIZ_SECRET`), or None when it is unset or empty."""
    return os.environ.get(SECRET_ENV) or None


def default_sender() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def inbox_name(command_id: str, sent_at: float | None = None) -> str:
    """File name of a command in `inbox/`: milliseconds first, so names sort in sending order."""
    ms = round((time.time() if sent_at is None else sent_at) * 1000)
    return f"{ms:013d}-{command_id}.json"


def id_from_filename(name: str) -> str:
    """The command id a response to file `name` must carry, even when its content is unreadable."""
    m = _FILE_RE.fullmatch(name)
    if m:
        return m.group(2)
    # A badly named file still gets one response of its own: a readable prefix and a hash of the whole name,
    # so two such names never share an outbox file.
    stem = name[:-5] if name.endswith(".json") else name
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:40]
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{safe or 'unnamed'}-{digest}"


def is_command_filename(name: str) -> bool:
    return _FILE_RE.fullmatch(name) is not None


def is_response_id(text: object) -> bool:
    """A command id, or the id `id_from_filename` gives a badly named file."""
    return isinstance(text, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text) is not None


def canonical(obj: Mapping[str, Any]) -> bytes:
    """Stable bytes of a command without its signature: what HMAC signs."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(obj: Mapping[str, Any], secret: str | bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, canonical(obj), hashlib.sha256).hexdigest()


def printable(text: str, limit: int = 200) -> str:
    """`text` safe to show in a terminal or a page: no control characters, escape sequences or lone surrogates."""
    return _UNPRINTABLE.sub("\ufffd", text[:limit])


def _epoch(obj: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = obj.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < MAX_EPOCH:
        raise ProtocolError(
            f"'{key}' must be epoch seconds (a number from 0 to 1e11); received {value!r:.80}",
            type="InvalidArgs",
        )
    return float(value)


@dataclass(frozen=True)
class Command:
    id: str
    kind: str
    args: dict[str, Any]
    sender: str = ""
    sent_at: float = 0.0
    v: int = VERSION
    sig: str | None = None
    expires_at: float | None = None  # not claimed by then: answered rejected/Expired, never applied

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "kind": self.kind,
            "args": self.args,
            "sender": self.sender,
            "sent_at": self.sent_at,
        }
        if self.expires_at is not None:
            d["expires_at"] = self.expires_at
        if self.sig is not None:
            d["sig"] = self.sig
        return d


def make_command(
    kind: str,
    args: Mapping[str, Any] | None = None,
    *,
    sender: str | None = None,
    secret: str | bytes | None = None,
    command_id: str | None = None,
    expires_in: float | None = None,
    clock: Clock = _clock,
) -> Command:
    """Build (and sign when `secret` is given) a valid command, raising ProtocolError on bad arguments.
    `expires_in`: seconds after which a bridge that has not claimed it answers rejected/Expired instead."""
    entry = kinds.get(kind)
    checked = entry.parse_args(dict(args) if isinstance(args, Mapping) else args)
    sent_at = clock()
    cmd = Command(
        id=command_id or new_id(),
        kind=entry.name,
        args=checked,
        sender=printable(sender if sender is not None else default_sender()),
        sent_at=sent_at,
        expires_at=sent_at + expires_in if expires_in is not None else None,
    )
    if secret:
        return Command(**{**cmd.__dict__, "sig": sign(cmd.to_dict(), secret)})
    return cmd


def parse_command(data: bytes, *, file_id: str, secret: str | bytes | None = None) -> Command:
    """Parse and validate one command file's bytes. `file_id` is the id its file name carries.

    Anything wrong with the bytes is a ProtocolError naming it: never another exception, whatever the file holds
    (nesting 100k deep, 400-digit numbers, lone surrogates, wrong types everywhere).
    """
    if len(data) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command file is {len(data)} bytes; the limit is {MAX_COMMAND_BYTES}", type="TooLarge")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"command file is not valid UTF-8 JSON: {e}", type="BadJSON") from None
    except RecursionError:
        raise ProtocolError("command file is nested too deeply to be a command", type="BadJSON") from None
    except ValueError as e:  # a constant (NaN, Infinity), or an integer of more than 4300 digits
        raise ProtocolError(f"command file is not a command: {e}", type="BadJSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a command must be a JSON object; received {type(obj).__name__}", type="BadJSON")
    v = obj.get("v")
    if type(v) is not int or v != VERSION:
        raise ProtocolError(f"protocol version must be {VERSION}; received {v!r:.40}", type="BadVersion")
    cid = obj.get("id")
    if not is_command_id(cid):
        raise ProtocolError(f"'id' must be 32 lowercase hex digits; received {cid!r:.80}", type="InvalidId")
    if cid != file_id:
        raise ProtocolError(f"'id' {cid!r} does not match the file name's id {file_id!r}", type="InvalidId")
    if secret:
        sig = obj.get("sig")
        if not isinstance(sig, str):
            raise ProtocolError(
                "this bridge requires signed commands (BIDVIZ_SECRET is set); the command has no 'sig'",
                type="BadSignature",
            )
        try:
            expected = sign(obj, secret)
        except (RecursionError, ValueError, TypeError):
            raise ProtocolError("the command cannot be signed as sent (nested too deeply?)", type="BadJSON") from None
        if not sig.isascii() or not hmac.compare_digest(sig, expected):
            raise ProtocolError("the command's 'sig' does not match; check BIDVIZ_SECRET", type="BadSignature")
    entry = kinds.get(obj.get("kind"))
    sender = obj.get("sender", "")
    if not isinstance(sender, str):
        raise ProtocolError(f"'sender' must be a string; received {type(sender).__name__}", type="InvalidArgs")
    return Command(
        id=cid,
        kind=entry.name,
        args=entry.parse_args(obj.get("args")),
        sender=printable(sender),
        sent_at=_epoch(obj, "sent_at", 0.0) or 0.0,
        sig=obj.get("sig") if isinstance(obj.get("sig"), str) else None,
        expires_at=_epoch(obj, "expires_at", None),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f'command file holds {name}, which is not JSON; send it as a string, e.g. "{name.lower()}"')


@dataclass
class Response:
    id: str
    kind: str
    status: str
    step: int | None = None
    result: Any = None
    repr: str | None = None
    error: dict[str, Any] | None = None
    received_at: float = 0.0
    applied_at: float = 0.0
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "step": self.step,
            "result": self.result,
            "repr": self.repr,
            "error": self.error,
            "received_at": self.received_at,
            "applied_at": self.applied_at,
        }


def to_json_value(value: Any, depth: int = 0) -> Any:
    """`value` as something JSON can hold, or raise TypeError. Non-finite floats become strings ("NaN", ...)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value).replace("inf", "Infinity").replace("nan", "NaN")
    if depth > 20:
        raise TypeError("nested too deeply")
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, depth + 1) for v in value]
    item = getattr(value, "item", None)
    size = getattr(value, "size", None)
    if callable(item) and (size == 1 or (callable(size) and _numel(value) == 1)) and getattr(value, "ndim", 0) == 0:
        return to_json_value(item(), depth + 1)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and _numel(value) <= 10_000:
        return to_json_value(tolist(), depth + 1)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _numel(value: Any) -> int:
    numel = getattr(value, "numel", None)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", 0)
    return int(size) if not callable(size) else 0


def dumps(obj: Any) -> bytes:
    """Strict JSON for files other processes and browsers read: non-finite floats become strings ("NaN")."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), default=str).encode()
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, separators=(",", ":"), default=str).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return to_json_value(obj)
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj

"""Protocol v1: the command and response schema shared by the bridge and every client.

Depends on nothing of ours. Commands parse into small frozen dataclasses; every
validation error names what was received and what is expected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

VERSION = 1
MAX_COMMAND_BYTES = 256 * 1024
#: The shared signing secret, for the bridge and every client alike.
SECRET_ENV = "BIDVIZ_SECRET"

#: kind -> (required args, optional args with defaults)
KINDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "set_hparam": (("name", "value"), {}),
    "add_metric": (("name", "code"), {"every": 1, "replace": False, "kind": "auto"}),
    "remove_metric": (("name",), {}),
    "pause_metric": (("name",), {}),
    "resume_metric": (("name",), {}),
    "add_diagnostics": ((), {"every": 1}),
    "eval": (("code",), {"now": False}),
    "pause": ((), {}),
    "resume": ((), {}),
    "stop": ((), {}),
}
METRIC_KINDS = ("auto", "scalar", "histogram", "image", "text")
STATUSES = ("applied", "rejected", "failed")

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/@]{0,127}$")
_FILE_RE = re.compile(r"^(\d{1,16})-([0-9a-f]{32})\.json$")


def new_id() -> str:
    return uuid.uuid4().hex


def is_command_id(text: str) -> bool:
    return _ID_RE.match(text) is not None


_last_ms = 0


def _next_sent_at() -> float:
    """Epoch seconds, at least one millisecond after the previous command of this process, so that commands
    sent in a row sort (by their inbox file names) in the order they were made."""
    global _last_ms
    now = time.time()
    ms = max(int(now * 1000), _last_ms + 1)
    _last_ms = ms
    return max(now, ms / 1000)


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
    ms = int((time.time() if sent_at is None else sent_at) * 1000)
    return f"{ms:013d}-{command_id}.json"


def id_from_filename(name: str) -> str:
    """The command id a response to file `name` must carry, even when its content is unreadable."""
    m = _FILE_RE.match(name)
    if m:
        return m.group(2)
    stem = name[:-5] if name.endswith(".json") else name
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:64]
    return safe or "unnamed"


def is_command_filename(name: str) -> bool:
    return _FILE_RE.match(name) is not None


def canonical(obj: Mapping[str, Any]) -> bytes:
    """Stable bytes of a command without its signature: what HMAC signs."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(obj: Mapping[str, Any], secret: str | bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, canonical(obj), hashlib.sha256).hexdigest()


def check_name(name: object, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ProtocolError(
            f"{what} must be 1-128 characters of letters, digits and _ . - / @ (not starting with one of . - / @,"
            f" no '..'); received {name!r}",
            type="InvalidName",
        )
    return name


def _check_args(kind: str, args: object) -> dict[str, Any]:
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(f"'args' must be a JSON object; received {type(args).__name__}", type="InvalidArgs")
    required, optional = KINDS[kind]
    missing = [a for a in required if a not in args]
    if missing:
        raise ProtocolError(
            f"{kind} needs args {', '.join(required)}; missing {', '.join(missing)}", type="InvalidArgs"
        )
    allowed = set(required) | set(optional)
    extra = sorted(set(args) - allowed)
    if extra:
        raise ProtocolError(
            f"{kind} takes args {', '.join(sorted(allowed)) or '(none)'}; unknown {', '.join(extra)}",
            type="InvalidArgs",
        )
    out = {**optional, **args}
    if "name" in out:
        check_name(out["name"], f"{kind} 'name'")
    if "code" in out and (not isinstance(out["code"], str) or not out["code"].strip()):
        raise ProtocolError(f"{kind} 'code' must be a non-empty string; received {out['code']!r}", type="InvalidArgs")
    if "every" in out:
        every = out["every"]
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ProtocolError(f"'every' must be an integer >= 1; received {every!r}", type="InvalidArgs")
    for flag in ("replace", "now"):
        if flag in out and not isinstance(out[flag], bool):
            raise ProtocolError(f"'{flag}' must be true or false; received {out[flag]!r}", type="InvalidArgs")
    if kind == "add_metric" and out["kind"] not in METRIC_KINDS:
        raise ProtocolError(
            f"metric 'kind' must be one of {', '.join(METRIC_KINDS)}; received {out['kind']!r}", type="InvalidArgs"
        )
    return out


@dataclass(frozen=True)
class Command:
    id: str
    kind: str
    args: dict[str, Any]
    sender: str = ""
    sent_at: float = 0.0
    v: int = VERSION
    sig: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "kind": self.kind,
            "args": self.args,
            "sender": self.sender,
            "sent_at": self.sent_at,
        }
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
) -> Command:
    """Build (and sign when `secret` is given) a valid command, raising ProtocolError on bad arguments."""
    if kind not in KINDS:
        raise ProtocolError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", type="UnknownKind")
    checked = _check_args(kind, dict(args or {}))
    cmd = Command(
        id=command_id or new_id(),
        kind=kind,
        args=checked,
        sender=sender if sender is not None else default_sender(),
        sent_at=_next_sent_at(),
    )
    if secret:
        return Command(**{**cmd.__dict__, "sig": sign(cmd.to_dict(), secret)})
    return cmd


def parse_command(data: bytes, *, file_id: str, secret: str | bytes | None = None) -> Command:
    """Parse and validate one command file's bytes. `file_id` is the id its file name carries."""
    if len(data) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command file is {len(data)} bytes; the limit is {MAX_COMMAND_BYTES}", type="TooLarge")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"command file is not valid UTF-8 JSON: {e}", type="BadJSON") from None
    except ValueError as e:
        raise ProtocolError(str(e), type="BadJSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a command must be a JSON object; received {type(obj).__name__}", type="BadJSON")
    v = obj.get("v")
    if v != VERSION:
        raise ProtocolError(f"protocol version must be {VERSION}; received {v!r}", type="BadVersion")
    cid = obj.get("id")
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        raise ProtocolError(f"'id' must be 32 lowercase hex digits; received {cid!r}", type="InvalidId")
    if cid != file_id:
        raise ProtocolError(f"'id' {cid!r} does not match the file name's id {file_id!r}", type="InvalidId")
    if secret:
        sig = obj.get("sig")
        if not isinstance(sig, str):
            raise ProtocolError(
                "this bridge requires signed commands (BIDVIZ_SECRET is set); the command has no 'sig'",
                type="BadSignature",
            )
        if not hmac.compare_digest(sig, sign(obj, secret)):
            raise ProtocolError("the command's 'sig' does not match; check BIDVIZ_SECRET", type="BadSignature")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ProtocolError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", type="UnknownKind")
    sender = obj.get("sender", "")
    sent_at = obj.get("sent_at", 0.0)
    if not isinstance(sender, str):
        raise ProtocolError(f"'sender' must be a string; received {sender!r}", type="InvalidArgs")
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
        raise ProtocolError(f"'sent_at' must be epoch seconds; received {sent_at!r}", type="InvalidArgs")
    return Command(
        id=cid,
        kind=kind,
        args=_check_args(kind, obj.get("args")),
        sender=sender[:200],
        sent_at=float(sent_at),
        sig=obj.get("sig"),
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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
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
        d.update(self.extra)
        return d


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

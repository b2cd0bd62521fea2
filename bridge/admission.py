"""Watcher-side admission of one command file: file checks, parsing, validation and compiling.

Everything that can be refused is refused here, before the training thread sees the command.
"""

from __future__ import annotations

import os
import stat
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.protocol import Command, ProtocolError

from .diagnostics import PACK
from .metrics import compile_eval, compile_metric


@dataclass(frozen=True)
class Admitted:
    """A command ready to apply: parsed, checked, and its code compiled."""

    command: Command
    file: Path
    received_at: float
    code: Any = None  # metric code object, (stmts, expr) for eval, or {name: code object} for diagnostics


def read_command_file(path: Path, *, secret: str | None) -> Command:
    """The command in `path`, or ProtocolError for a symlink, a foreign or oversized file, or bad content."""
    name = path.name
    file_id = protocol.id_from_filename(name)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ProtocolError(
            f"{name} is a symlink; command files must be regular files written into inbox/ by a client",
            type="NotAFile",
        )
    if not stat.S_ISREG(st.st_mode):
        raise ProtocolError(f"{name} is not a regular file", type="NotAFile")
    if st.st_uid != os.getuid():
        raise ProtocolError(
            f"{name} belongs to uid {st.st_uid}, not to the bridge's user (uid {os.getuid()}); commands are taken "
            "only from the user who runs training",
            type="NotOwned",
        )
    if st.st_size > protocol.MAX_COMMAND_BYTES:
        raise ProtocolError(f"{name} is {st.st_size} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge")
    if not protocol.is_command_filename(name):
        raise ProtocolError(
            f"command files are named <milliseconds>-<32 hex id>.json; received {name!r}", type="BadFileName"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        data = os.read(fd, protocol.MAX_COMMAND_BYTES + 1)
    finally:
        os.close(fd)
    return protocol.parse_command(data, file_id=file_id, secret=secret)


def admit(path: Path, *, secret: str | None, metric_names: set[str], hparam_names: set[str] | None) -> Admitted:
    """Read, validate and compile. `hparam_names` None means hparams may still be registered: check at apply."""
    received = time.time()
    cmd = read_command_file(path, secret=secret)
    args = cmd.args
    code: Any = None
    if cmd.kind == "set_hparam" and hparam_names is not None and args["name"] not in hparam_names:
        raise unknown_hparam(args["name"], hparam_names)
    elif cmd.kind == "add_metric":
        if args["name"] in metric_names and not args["replace"]:
            raise metric_exists(args["name"])
        code = compile_metric(args["name"], args["code"])
    elif cmd.kind in ("remove_metric", "pause_metric", "resume_metric") and args["name"] not in metric_names:
        raise unknown_metric(args["name"], metric_names)
    elif cmd.kind == "eval":
        code = compile_eval(args["code"])
    elif cmd.kind == "add_diagnostics":
        code = {name: compile_metric(name, src) for name, src in PACK.items()}
    return Admitted(cmd, path, received, code)


def unknown_hparam(name: str, known: set[str] | list[str]) -> ProtocolError:
    return ProtocolError(
        f"no hyperparameter {name!r}; registered: {', '.join(sorted(known)) or '(none)'}", type="UnknownName"
    )


def unknown_metric(name: str, known: set[str] | list[str]) -> ProtocolError:
    return ProtocolError(f"no metric {name!r}; metrics: {', '.join(sorted(known)) or '(none)'}", type="UnknownName")


def metric_exists(name: str) -> ProtocolError:
    return ProtocolError(
        f"a metric named {name!r} exists; pass replace=true (CLI: --replace) to change its code", type="NameTaken"
    )


def eval_code(code: tuple[types.CodeType | None, types.CodeType | None], namespace: dict[str, Any]) -> Any:
    stmts, expr = code
    if stmts is not None:
        exec(stmts, namespace)
    return eval(expr, namespace) if expr is not None else None

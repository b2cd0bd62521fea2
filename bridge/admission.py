"""Admission of one command file, in the mailroom thread: file checks, parsing, validation and compiling.

Everything that can be refused is refused here, before the training thread sees the command. `admit` raises
ProtocolError for anything wrong with the file; the mailroom turns any other exception into a rejection too.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidviz import protocol
from bidviz.errors import ProtocolError
from bidviz.protocol import Command

from .effects import BEHAVIOURS

if TYPE_CHECKING:
    from .registry import Registry


@dataclass(frozen=True)
class Admitted:
    """A command ready to apply: parsed, checked, and its code compiled."""

    command: Command
    file: Path | None  # None on the other ranks of a distributed job, which get the command from rank 0
    received_at: float
    code: Any = None  # what the kind's admit step made: a metric's code object, an eval's (stmts, expr), ...


def read_command_file(path: Path, *, secret: str | None) -> Command:
    """The command in `path`, or ProtocolError for a symlink, a directory, a foreign or oversized file, or bad
    content."""
    name = path.name
    file_id = protocol.id_from_filename(name)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ProtocolError(
            f"{name!r} is a symlink; command files must be regular files written into inbox/ by a client",
            type="NotAFile",
        )
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ProtocolError(f"{name!r} is {what}; the inbox takes one command file each", type="NotAFile")
    if st.st_uid != os.getuid():
        raise ProtocolError(
            f"{name!r} belongs to uid {st.st_uid}, not to the bridge's user (uid {os.getuid()}); commands are taken "
            "only from the user who runs training",
            type="NotOwned",
        )
    if st.st_size > protocol.MAX_COMMAND_BYTES:
        raise ProtocolError(
            f"{name!r} is {st.st_size} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge"
        )
    if not protocol.is_command_filename(name):
        raise ProtocolError(
            f"command files are named <milliseconds>-<32 hex id>.json; received {name!r}", type="BadFileName"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the lstat and the open
            raise ProtocolError(f"{name!r} is not a regular file", type="NotAFile")
        data = os.read(fd, protocol.MAX_COMMAND_BYTES + 1)
    finally:
        os.close(fd)
    return protocol.parse_command(data, file_id=file_id, secret=secret)


def admit(path: Path, *, secret: str | None, registry: Registry, now: float | None = None) -> Admitted:
    """Read, validate and compile through the kind's admit step."""
    received = time.time() if now is None else now
    cmd = read_command_file(path, secret=secret)
    if cmd.expires_at is not None and cmd.expires_at < received:
        raise ProtocolError(
            f"the command expired {received - cmd.expires_at:.1f}s before this bridge claimed it (its sender gave up "
            "waiting); it was not applied: send it again",
            type="Expired",
        )
    return admit_command(cmd, registry, path, received)


def admit_command(cmd: Command, registry: Registry, path: Path | None, received: float) -> Admitted:
    """A parsed command through its kind's admit step (checks against the registry, compiling)."""
    behaviour = BEHAVIOURS[cmd.kind]
    code = behaviour.admit(registry, cmd) if behaviour.admit is not None else None
    return Admitted(cmd, path, received, code)

"""Admission of one command file, in the mailroom thread: file checks, parsing, validation and compiling.

Everything that can be refused is refused here, before the training thread sees the command. `admit` raises
ProtocolError for anything wrong with the file; the mailroom turns any other exception into a rejection too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidviz import protocol
from bidviz.errors import ProtocolError
from bidviz.protocol import Command

from .effects import BEHAVIOURS

if TYPE_CHECKING:
    from bidviz.channel import Mailbox

    from .registry import Registry


@dataclass(frozen=True)
class Admitted:
    """A command ready to apply: parsed, checked, and its code compiled."""

    command: Command
    file: Path | None  # None on the other ranks of a distributed job, which get the command from rank 0
    received_at: float
    code: Any = None  # what the kind's admit step made: a metric's code object, an eval's (stmts, expr), ...


def read_command_file(mailbox: Mailbox, path: Path, *, secret: str | None, source: Path | None = None) -> Command:
    """The command in inbox file `path` (read through `source`, the bridge's claim on it, when given), or
    ProtocolError for a symlink, a directory, a foreign or oversized file, or bad content."""
    data = mailbox.read_command(path.name, source)
    return protocol.parse_command(data, file_id=protocol.id_from_filename(path.name), secret=secret)


def admit(
    mailbox: Mailbox,
    path: Path,
    *,
    secret: str | None,
    registry: Registry,
    now: float | None = None,
    source: Path | None = None,
) -> Admitted:
    """Read (through `source`, the claim, when given), validate and compile through the kind's admit step."""
    received = time.time() if now is None else now
    cmd = read_command_file(mailbox, path, secret=secret, source=source)
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

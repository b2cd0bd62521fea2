"""What clients show about runs, computed once for the CLI and the TensorBoard plugin alike: a run's status row
and the label of a journal entry. Depends only on `bidviz.channel`, `bidviz.kinds` and `bidviz.errors`.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Mapping
from typing import Any

from bidviz import kinds
from bidviz.channel import Mailbox, heartbeat, pid_alive
from bidviz.errors import ChannelError, ProtocolError

__all__ = ["UNREADABLE", "bridge_process_alive", "command_label", "ended", "no_status", "status_row"]

#: the `live` value of a run whose mailbox or state.json cannot be read (its row's `problem` says why)
UNREADABLE = "unreadable"


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if not isinstance(value, float) or math.isfinite(value) else None


def no_status() -> dict[str, Any]:
    """The status row of a run without a bridge (no mailbox, or no state.json yet)."""
    return {
        "live": "none",
        "step": None,
        "steps_per_sec": None,
        "heartbeat": None,
        "heartbeat_age": None,
        "paused": None,
        "pid": None,
        "host": None,
        "guard": None,
    }


def status_row(mailbox: Mailbox, *, now: float | None = None) -> dict[str, Any]:
    """One run's status from its state.json: `live` ('live', 'stale', 'ended', 'none', or 'unreadable' with a
    `problem` saying why), `step`, `steps_per_sec`, `heartbeat`, `heartbeat_age` (seconds), `paused`, `pid`,
    `host`. Whatever the file holds, each value is of the documented type or None."""
    now = time.time() if now is None else now
    row = no_status()
    try:
        mailbox.check_root()
        state = mailbox.read_state()
    except ChannelError as e:  # StateError included: a corrupt or unreadable state.json
        return {**row, "live": UNREADABLE, "problem": str(e)}
    if state is None:
        return row
    beat = heartbeat(state)
    paused = state.get("paused")
    host = state.get("host")
    pid = state.get("pid")
    row.update(
        live=mailbox.liveness(state),
        step=_number(state.get("step")),
        steps_per_sec=_number(state.get("steps_per_sec")),
        heartbeat=beat,
        heartbeat_age=max(0.0, now - beat) if beat is not None else None,
        paused=paused if isinstance(paused, bool) else None,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host=host if isinstance(host, str) else None,
        guard=guard_trip(state),
    )
    return row


def guard_trip(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The divergence guard's trip that holds the run (reason, step, and the last snapshot's id, step and the command
    it was taken before, to rewind with), or None. Each value is of its type or None, whatever state.json holds."""
    guard = state.get("guard")
    tripped = guard.get("tripped") if isinstance(guard, Mapping) else None
    if not isinstance(tripped, Mapping) or tripped.get("active") is not True:
        return None
    snap = tripped.get("snapshot") if isinstance(tripped.get("snapshot"), Mapping) else {}
    text = lambda v: v if isinstance(v, str) else None  # noqa: E731
    return {
        "reason": text(tripped.get("reason")) or "a non-finite loss",
        "step": _number(tripped.get("step")),
        "snapshot": text(snap.get("id")),
        "snapshot_step": _number(snap.get("step")),
        "before": text(snap.get("command")),
    }


def bridge_process_alive(row: Mapping[str, Any]) -> bool:
    """False only when a status row's bridge ran on this host and its process is gone (killed or crashed)."""
    return row.get("host") != socket.gethostname() or pid_alive(row.get("pid"))


def ended(mailbox: Mailbox) -> str | None:
    """Why no bridge will claim a command sent to this run now (training closed it, or its process is gone), or
    None while one may: a client refuses to send then, unless asked to queue it for a bridge that resumes the run."""
    row = status_row(mailbox)
    ago = f"{row['heartbeat_age']:.0f}s" if row["heartbeat_age"] is not None else "?"
    if row["live"] == "ended":
        return f"its bridge has ended: training closed it {ago} ago"
    if row["live"] == "stale" and not bridge_process_alive(row):
        return f"its bridge is gone: pid {row['pid']} on this host no longer runs (last heartbeat {ago} ago)"
    return None


def command_label(entry: Mapping[str, Any]) -> str:
    """What a journal command line did, e.g. `set lr=0.01`: its `label` as the bridge wrote it, or, for a line
    from before labels, the label its kind gives its args (the kind's name when neither is usable)."""
    label = entry.get("label")
    if isinstance(label, str) and label:
        return label
    kind = entry.get("kind")
    args = entry.get("args")
    try:
        entry_kind = kinds.get(kind)
    except ProtocolError:
        return kind if isinstance(kind, str) else "?"
    if not isinstance(args, Mapping):
        return entry_kind.name
    try:
        return entry_kind.describe(args)
    except (TypeError, ValueError, KeyError, IndexError, RecursionError):  # args of a hand-edited or hostile line
        return entry_kind.name

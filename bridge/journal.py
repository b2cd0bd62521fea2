"""The bridge's records on disk: responses and journal lines (written in order by one I/O thread), and the
replay of a journal when a run resumes."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox

from .admission import Admitted
from .diagnostics import PACK

REPR_LIMIT = 100_000


def build_response(
    item: Admitted, status: str, step: int | None, result: Any = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The response to a command: `result` when JSON can hold it, and its `repr` when it was applied."""
    try:
        json_result = protocol.to_json_value(result)
    except TypeError:
        json_result = None
    if json_result is not None and len(protocol.dumps(json_result)) > REPR_LIMIT:
        json_result = None
    text = None
    if status == "applied":
        try:
            text = repr(result)
        except Exception as e:  # a broken __repr__ is not the command's failure
            text = f"<repr failed: {type(e).__name__}: {e}>"
        if len(text) > REPR_LIMIT:
            text = text[:REPR_LIMIT] + f"... ({len(text)} characters)"
    cmd = item.command
    return protocol.Response(
        id=cmd.id,
        kind=cmd.kind,
        status=status,
        step=step,
        result=json_result,
        repr=text,
        error=error,
        received_at=item.received_at,
        applied_at=time.time(),
    ).to_dict()


class Recorder:
    """Writes journal lines, state and responses in one thread, in order, so that neither the training thread
    nor the watcher waits on a disk. A command's journal line comes first, then the state, then its response,
    then its file leaves the inbox: a crash in between leaves it either unjournaled (applied again once, on
    restart) or journaled (answered from the journal on restart, never applied twice)."""

    def __init__(self, mailbox: Mailbox, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.mailbox = mailbox
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Path | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bidviz-io", daemon=True)
        self.dirty = True  # state changed since it was last written
        self.last_state = 0.0

    def start(self) -> None:
        self._thread.start()

    def command(self, item: Admitted, response: dict[str, Any]) -> None:
        cmd = item.command
        entry = {
            "time": response["applied_at"],
            "step": response["step"],
            "event": "command",
            "id": cmd.id,
            "kind": cmd.kind,
            "args": cmd.args,
            "sender": cmd.sender,
            "status": response["status"],
            "error": response["error"],
            "response": response,
        }
        self._queue.put((entry, item.file))

    def event(self, entry: dict[str, Any]) -> None:
        """A metric error or disable: journaled, no response."""
        self._queue.put((entry, None))

    def write_state(self) -> None:
        with self._lock:
            self._write_state()

    def _write_state(self) -> None:
        self.dirty = False
        self.last_state = time.monotonic()
        self.mailbox.write_state(self._snapshot())

    def close(self, timeout: float = 60) -> None:
        """Write everything queued, then stop."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            entry, file = job
            try:
                with self._lock:
                    self.mailbox.append_journal(entry)
                    if "response" in entry:
                        self._write_state()
                        self.mailbox.write_response(entry["response"])
            except OSError as e:  # a full or vanished disk must not stop training; the file stays for a restart
                warn(f"could not journal or answer {entry.get('kind', entry.get('event'))}: {e}")
                continue
            if file is not None:
                unlink(file)


@dataclass
class Replay:
    """What a resumed run gets back from its journal."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # command id -> its response
    hparams: dict[str, Any] = field(default_factory=dict)  # name -> last applied value
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> add_metric args, status, sender


def replay(entries: Iterable[dict[str, Any]], *, restore: bool = True) -> Replay:
    """Every answered command (so none is applied twice) and, with `restore`, the tuned hyperparameters and the
    metric set as the journal leaves them. A metric disabled by its errors stays disabled."""
    out = Replay()
    specs = out.metrics
    for entry in entries:
        event = entry.get("event")
        if event == "metric_disabled" and entry.get("metric") in specs:
            specs[entry["metric"]]["status"] = "disabled"
        if event != "command" or not isinstance(entry.get("response"), dict):
            continue
        out.done[entry["id"]] = entry["response"]
        if not restore or entry.get("status") != "applied":
            continue
        kind, args, sender = entry.get("kind"), entry.get("args") or {}, entry.get("sender", "")
        name = str(args.get("name"))
        if kind == "set_hparam":
            out.hparams[name] = args["value"]
        elif kind == "add_metric":
            specs[name] = {**args, "status": "running", "sender": sender}
        elif kind == "add_diagnostics":
            for diag, src in PACK.items():
                spec = {"name": diag, "code": src, "every": args.get("every", 1), "kind": "auto"}
                specs[diag] = {**spec, "status": "running", "sender": sender}
        elif kind == "remove_metric":
            specs.pop(name, None)
        elif kind in ("pause_metric", "resume_metric") and name in specs:
            specs[name]["status"] = "paused" if kind == "pause_metric" else "running"
    return out


def warn(message: str) -> None:
    print(f"bidviz: {message}", file=sys.stderr, flush=True)


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

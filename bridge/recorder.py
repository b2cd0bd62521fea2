"""The recorder: the bridge's records on disk (journal, responses, state), written in order by one I/O thread.

Crash safety, for a command that runs user code (a kind that is not idempotent):
1. before it takes effect, the training thread appends `applying` to the journal and fsyncs it (`applying`);
2. after it, its outcome line is journaled (fsync), then its response is written, then its file leaves the inbox.
A crash before 1 leaves the file in the inbox (applied once, on restart); between 1 and 2 the restart answers it
`failed`/`Interrupted` and never runs it again; after 2 the journal answers it. Idempotent kinds skip step 1:
re-applying one after a crash does no harm.

State is written by the mailroom's tick (at most every STATE_SECONDS while it changes, else every second) and once
per batch of answers, before them: a client that got an answer reads a state that shows it, and a burst of commands
costs one state write, not one each.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bidviz import kinds, protocol
from bidviz.channel import Mailbox

from .admission import Admitted
from .effects import Rendered, render
from .replay import Restored, checkpoint, fold

STATE_SECONDS = 0.2
JOURNAL_REPR = 4_000  # characters of a result's repr kept in its journal line (the response has more)
OUTBOX_SECONDS = 3600.0  # responses are kept this long after they were journaled (clients wait up to --wait)
OUTBOX_MAX = 10_000  # and at most this many
TMP_SECONDS = 600.0  # a file left in tmp/ this long belongs to a writer that died
PRUNE_SECONDS = 60.0
CHECKPOINT_LINES = 1000  # journal lines between checkpoints: a resume reads at most about this many


def build_response(
    item: Admitted, status: str, step: int | None, outcome: Rendered | None = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    cmd = item.command
    return protocol.Response(
        id=cmd.id,
        kind=cmd.kind,
        status=status,
        step=step,
        result=outcome.result if outcome is not None else None,
        repr=outcome.text if outcome is not None and status == "applied" else None,
        error=error,
        received_at=item.received_at,
        applied_at=time.time(),
    ).to_dict()


def journal_line(item: Admitted, response: dict[str, Any]) -> dict[str, Any]:
    """A command's outcome line: its args, its label, and its response with a bounded result."""
    cmd = item.command
    kept = dict(response)
    text = kept.get("repr")
    if isinstance(text, str) and len(text) > JOURNAL_REPR:
        kept["repr"] = f"{text[:JOURNAL_REPR]}... (cut in the journal: {len(text)} characters in all)"
    if kept.get("result") is not None and len(protocol.dumps(kept["result"])) > JOURNAL_REPR:
        kept["result"] = None
    entry = kinds.KINDS.get(cmd.kind)
    return {
        "time": response["applied_at"],
        "step": response["step"],
        "event": "command",
        "id": cmd.id,
        "kind": cmd.kind,
        "label": entry.describe(cmd.args) if entry is not None else cmd.kind,
        "args": cmd.args,
        "sender": cmd.sender,
        "status": response["status"],
        "error": response["error"],
        "response": kept,
    }


class Recorder:
    """Journal, responses and state of one mailbox, written in order by one I/O thread."""

    def __init__(
        self, mailbox: Mailbox, snapshot: Callable[[], dict[str, Any]], held: Callable[[], bool] = lambda: True
    ) -> None:
        self.mailbox = mailbox
        self._snapshot = snapshot
        self._held = held  # False: the run's owner lease is not this bridge's now (a store): write nothing
        self._state_lock = threading.Lock()
        self._journal = mailbox.open_journal()
        self._jobs: queue.SimpleQueue[tuple[dict[str, Any], dict[str, Any] | None, Path | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="bidviz-io", daemon=True)
        self._journal_lock = threading.Lock()  # the file's order is the order lines are folded in
        self._folded = Restored()  # what a replay of everything journaled so far gives: the next checkpoint
        self._restore = True
        self._since_checkpoint = 0
        self._answered: collections.deque[tuple[float, str]] = (
            collections.deque()
        )  # (time, id) of responses written, oldest first, for pruning
        self._last_prune = 0.0
        self.last_state = 0.0
        self.error: str | None = None  # the last write that failed (a full disk): shown in state.json
        self.on_removed: Callable[[str], None] | None = None  # a command file left the inbox: its name

    def start(self, restored: Restored, *, restore: bool = True) -> None:
        """Begin with what the replay gave (`restore=False`: a fresh start, whose checkpoints forget the past)."""
        self._folded = Restored(
            hparams=dict(restored.hparams),
            metrics={n: dict(m) for n, m in restored.metrics.items()},
            rules={n: dict(r) for n, r in restored.rules.items()},
        )
        self._folded.interrupted = dict(restored.interrupted)
        self._restore = restore
        if not restore:  # what came before no longer counts: say so now, in case this run crashes
            self._since_checkpoint = 1
            self._checkpoint()
        self.prune(time.time())
        self._thread.start()

    # -- called from the training thread and the mailroom -------------------------------------------------------

    def applying(self, items: Iterable[Admitted], step: int | None) -> None:
        """Write-ahead, in the training thread: these commands are about to take effect (fsynced)."""
        commands = [{"id": i.command.id, "kind": i.command.kind} for i in items]
        self._append([{"time": time.time(), "step": step, "event": "applying", "commands": commands}])

    def command(self, item: Admitted, response: dict[str, Any]) -> None:
        self._jobs.put((journal_line(item, response), response, item.file))

    def event(self, entry: dict[str, Any]) -> None:
        """A metric error, a disable, a value not restored: journaled, no response."""
        self._jobs.put((entry, None, None))

    def write_state(self) -> None:
        if not self._held():  # the run's state is the new owner's to write
            return
        with self._state_lock:
            self.last_state = time.monotonic()
            try:
                self.mailbox.write_state(self._snapshot())
            except OSError as e:
                self._failed(f"could not write state.json: {e}")

    def close(self, timeout: float = 60) -> None:
        """Write everything queued and a last checkpoint (the next start reads from it), then stop."""
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self._checkpoint()
        except OSError as e:
            self._failed(f"could not write the journal's checkpoint: {e}")
        self._journal.close()

    # -- the I/O thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch = [job]
            while True:  # everything queued meanwhile: one fsync for all of it
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)
                    break
                batch.append(more)
            try:
                self._write(batch)
            except Exception as e:  # noqa: BLE001 - never let the I/O thread die: report, keep the files for a restart
                self._failed(f"could not journal or answer {len(batch)} record(s): {type(e).__name__}: {e}")

    def _write(self, batch: list[tuple[dict[str, Any], dict[str, Any] | None, Path | None]]) -> None:
        if not self._held():  # the bridge that took the run over answers these commands from its own journal
            raise OSError("this bridge's lease on the run was lost or could not be renewed")
        self._append([entry for entry, _, _ in batch])
        now = time.time()
        answers = sum(response is not None for _, response, _ in batch)
        if answers:
            self.write_state()  # once per batch, so a client that got its answer reads a state that shows it
            if len(self._answered) + answers > OUTBOX_MAX:
                self.prune(now, room=answers)  # the cap holds with this batch's answers in the outbox too
        for _, response, file in batch:
            if response is None:
                continue
            self.mailbox.write_response(response, fsync=False)  # the journal, fsynced, has it already
            self._answered.append((now, response["id"]))
            if file is not None:
                self._remove(file)
        self.error = None
        if self._since_checkpoint >= CHECKPOINT_LINES or self._journal.full:
            self._checkpoint()
        if now - self._last_prune >= PRUNE_SECONDS:
            self.prune(now)

    def _append(self, entries: list[dict[str, Any]]) -> None:
        data = b"".join(protocol.dumps(e) + b"\n" for e in entries)
        with self._journal_lock:
            self._journal.append(data)
            for entry in entries:
                fold(self._folded, entry, restore=self._restore)
            self._since_checkpoint += len(entries)

    def _checkpoint(self) -> None:
        with self._journal_lock:
            if self._since_checkpoint and self._held():
                self._since_checkpoint = 0
                self._journal.append(protocol.dumps(checkpoint(self._folded)) + b"\n", checkpoint=True)

    def _remove(self, file: Path) -> None:
        """Take a handled command file out of the inbox; anything that is not a file is moved into tmp/."""
        self.mailbox.remove_command(file.name)
        self.mailbox.unclaim(file.name)  # after the response: a sender that withdraws now finds it answered
        if self.on_removed is not None:
            self.on_removed(file.name)

    def _failed(self, message: str) -> None:
        self.error = message
        print(f"bidviz: {message}", file=sys.stderr, flush=True)

    # -- pruning --------------------------------------------------------------------------------------------------

    def prune(self, now: float, room: int = 0) -> None:
        """Old responses (journaled long ago: the journal keeps them) and leftovers of dead writers in tmp/;
        `room`: answers about to be written, which must fit under OUTBOX_MAX with the ones kept."""
        self._last_prune = now
        keep_after = now - OUTBOX_SECONDS
        keep = max(OUTBOX_MAX - room, 0)
        while self._answered and (self._answered[0][0] < keep_after or len(self._answered) > keep):
            _, cid = self._answered.popleft()
            self.mailbox.remove_response(cid)
        # at start, also what earlier runs left in the outbox
        self.mailbox.prune(keep_after if not self._answered else None, now - TMP_SECONDS)


__all__ = ["Recorder", "build_response", "journal_line", "render"]

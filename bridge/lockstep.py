"""Lockstep: how the ranks of a distributed job meet at sync points and apply the same batch there.

The leader holds back what its mailroom admitted until the next sync point; there, `Ranks.exchange` posts the
batch to every rank and hands back the batch posted at the sync point before, which every rank applies now: the
leader its own admitted items, held since, the others their own copy (parsed and compiled again in their own
process). A paused job pauses at a sync point on every rank and stays in lockstep: the leader posts a sync point at
least every PAUSED_BEAT seconds (at once when a command is on its way), so the others wait inside a collective
that the beat keeps well within its timeout, and `resume` or `stop` reaches all of them at the same point. About
every REPORT_SECONDS the ranks also tell each other their steps (state.json shows them).

Followers (ranks other than 0) have no mailbox, mailroom or recorder: `Quiet` stands in for the recorder and
`NullWriter` for the writer (rank 0 writes the job's series).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bidviz import protocol
from bidviz.errors import ProtocolError

from .admission import Admitted, admit_command
from .applier import Applier
from .handoff import Handoff
from .ranks import PAUSED, REPORT, REPORT_SECONDS, STOPPING, Ranks
from .registry import Control, Registry

PAUSED_BEAT = 0.5


class Lockstep:
    def __init__(self, ranks: Ranks, handoff: Handoff, applier: Applier, control: Control, registry: Registry) -> None:
        self.ranks = ranks
        self.handoff = handoff
        self.applier = applier
        self.control = control
        self.registry = registry
        self.held: list[Admitted] = []  # the leader's items posted at the last sync point, applied at the next
        self._last_report = time.monotonic()

    def due(self, calls: int) -> bool:
        return calls >= self.ranks.next_sync

    def sync(self, calls: int, step: int, prepare: Callable[[], Any] | None) -> bool:
        """One sync point (and, while the job is paused, every one until it is resumed or stopped); True when the
        job was paused at it."""
        self._meet(calls, step, prepare, self.ranks.pace(self.control.steps_per_sec))
        control = self.control
        paused = False
        while control.paused and not control.should_stop and not control.closed:
            paused = True
            if self.ranks.leader and not self.held:
                self.handoff.arrived.wait(PAUSED_BEAT)
                self.handoff.arrived.clear()
            self._meet(calls, step, None, 1)
        return paused

    def _meet(self, calls: int, step: int, prepare: Callable[[], Any] | None, every: int) -> None:
        ranks = self.ranks
        posting: list[Admitted] = []
        flags = (PAUSED if self.control.paused else 0) | (STOPPING if self.control.should_stop else 0)
        if ranks.leader:
            while (item := self.handoff.take()) is not None:
                posting.append(item)
            now = time.monotonic()
            if now - self._last_report >= REPORT_SECONDS:
                self._last_report = now
                flags |= REPORT
        batch = [{"command": i.command.to_dict(), "received_at": i.received_at} for i in posting]
        try:
            received, got_flags = ranks.exchange(batch, every, flags, step)
        except BaseException:
            self.handoff.put_back(self.held + posting)  # never applied: answered when the bridge closes
            self.held = []
            raise
        ranks.next_sync = calls + ranks.every
        items, self.held = (self.held, posting) if ranks.leader else (list(self._admit(received)), [])
        if got_flags & REPORT:
            ranks.report_steps(step)
        if items:
            if prepare is not None:
                prepare()
            self.applier.apply_items(items)

    def close(self) -> list[Admitted]:
        """At close: the items posted but never applied (for the leader to answer), after the last header."""
        try:
            self.ranks.finish()
        except Exception:  # noqa: BLE001 - closing: a job whose group is gone has nothing left to wait for
            pass
        held, self.held = self.held, []
        return held

    def _admit(self, received: Sequence[Mapping[str, Any]]) -> Iterable[Admitted]:
        """This rank's own copy of the leader's batch: parsed and compiled here. A command this rank cannot
        admit (it should not happen: the ranks run the same code) is skipped and said on stderr."""
        for entry in received:
            try:
                data = entry["command"]
                cmd = protocol.parse_command(protocol.dumps(data), file_id=data["id"])
                yield admit_command(cmd, self.registry, None, float(entry["received_at"]))
            except (ProtocolError, KeyError, TypeError, ValueError, SyntaxError, RecursionError) as e:
                print(f"bidviz: rank {self.ranks.rank} could not admit a command of the leader: {e}", file=sys.stderr)


class Quiet:
    """A follower's recorder: nothing to journal, answer or write (the leader does)."""

    error: str | None = None
    last_state = 0.0

    def applying(self, items: Iterable[Admitted], step: int | None) -> None:
        pass

    def command(self, item: Admitted, response: dict[str, Any]) -> None:
        pass

    def event(self, entry: dict[str, Any]) -> None:
        pass

    def write_state(self) -> None:
        self.last_state = time.monotonic()

    def close(self, timeout: float = 0) -> None:
        pass


class NullWriter:
    """A follower's writer: rank 0 writes the job's series."""

    run_dir = None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def add_image(self, tag: str, array: Any, step: int, dataformats: str = "CHW") -> None:
        pass

    def add_hparams_session(self, hparams: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

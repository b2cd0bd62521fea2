"""Lockstep: how the ranks of a distributed job meet at sync points and apply the same batch there.

The leader holds back what its mailroom admitted until the next sync point; there, `Ranks.exchange` carries the
batch to every rank, each rank admits its own copy (compiling the code again in its own process) and the applier
runs it. A paused job pauses at a sync point on every rank and stays in lockstep: the leader sends a sync point at
least every PAUSED_BEAT seconds (with whatever arrived), so the others wait inside a collective that never times
out, and `resume` or `stop` reaches all of them at the same point.

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
from .ranks import PAUSED, STOPPING, Ranks
from .registry import Control, Registry

PAUSED_BEAT = 0.5


class Lockstep:
    def __init__(self, ranks: Ranks, handoff: Handoff, applier: Applier, control: Control, registry: Registry) -> None:
        self.ranks = ranks
        self.handoff = handoff
        self.applier = applier
        self.control = control
        self.registry = registry

    def due(self, calls: int) -> bool:
        return calls >= self.ranks.next_sync

    def sync(self, calls: int, step: int, prepare: Callable[[], Any] | None) -> None:
        """One sync point (and, while the job is paused, every one until it is resumed or stopped)."""
        self._meet(calls, step, prepare, self.ranks.pace(self.control.steps_per_sec))
        control = self.control
        while control.paused and not control.should_stop and not control.closed:
            if self.ranks.leader:
                self.handoff.arrived.wait(PAUSED_BEAT)
                self.handoff.arrived.clear()
            self._meet(calls, step, None, 1)

    def _meet(self, calls: int, step: int, prepare: Callable[[], Any] | None, every: int) -> None:
        ranks = self.ranks
        items: list[Admitted] = []
        if ranks.leader:
            while (item := self.handoff.take()) is not None:
                items.append(item)
        flags = (PAUSED if self.control.paused else 0) | (STOPPING if self.control.should_stop else 0)
        batch = [{"command": i.command.to_dict(), "received_at": i.received_at} for i in items]
        received, flags = ranks.exchange(batch, every, flags, step)
        ranks.next_sync = calls + ranks.every
        if not ranks.leader:
            items = list(self._admit(received))
        if items:
            if prepare is not None:
                prepare()
            self.applier.apply_items(items)

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

"""The ranks of a torch.distributed job: every rank applies the same commands at the same step.

Rank 0 (the leader) alone owns the mailbox: its mailroom admits, its recorder journals and answers. The transport
between ranks is torch.distributed itself, on a gloo group of the Bridge's own (`new_group(backend="gloo")`), so
control never touches an NCCL stream. A collective at every step would tax every step, so the ranks meet at
*sync points*: every rank knows the call of `step()` at which the next one falls.

Sync points are pipelined, so that no rank waits for another at one: at sync point k every rank posts an
asynchronous broadcast of the leader's header for k (bytes of commands that follow, interval, flags) and waits for
the header of sync point k-1, which was posted one interval ago and has long arrived on every rank that keeps pace.
What the leader sent at k-1 is applied by every rank at k, and the interval it carried separates k from k+1, chosen
so that sync points are about SYNC_SECONDS apart at the leader's pace. Agreement is guaranteed, not probable: no
rank passes sync point k without the header of k-1 and the commands it announces (the wait blocks until it has
them), and a command the leader admitted after posting k-1 waits for k. The price is one interval of latency.

A rank that dies or hangs does not wedge the others forever: the group's collectives time out (`timeout`), and
the survivors raise `RankLost` from `step()` saying which sync point was missed.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from bidviz.errors import BIDVizError

SYNC_SECONDS = 0.02
REPORT_SECONDS = 1.0  # how often the ranks tell each other their steps
MAX_EVERY = 100_000
PAUSED, STOPPING, REPORT = 1, 2, 4  # flags of a sync point


class RankLost(BIDVizError, RuntimeError):
    """A rank of the job did not reach a sync point in time: it died or hangs."""

    default_type = "RankLost"


class Ranks:
    """One rank's side of the control traffic."""

    def __init__(self, rank: int, world: int, *, timeout: float) -> None:
        import torch.distributed as dist

        self.rank, self.world, self.timeout = rank, world, timeout
        self.leader = rank == 0
        self._dist = dist
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
        self.next_sync = 1  # the call count of the next sync point: the first step() is one
        self.every = 1
        self.syncs = 0
        self.lost: str | None = None  # why the job's control is broken, for state.json
        self.steps: list[int | None] = [None] * world  # each rank's step at the last report
        import torch

        # The header's one buffer, posted at a sync point and waited at the next before it is written again (one
        # broadcast in flight at a time); written through a numpy view: a new tensor per sync point cost 70 us here.
        self._header = torch.zeros(3, dtype=torch.int64)
        self._header_view = self._header.numpy()
        self._posted: tuple[Any, bytes] | None = None  # the header broadcast posted at the last sync point; payload

    @classmethod
    def detect(cls, rank: int | None, world: int | None, timeout: float) -> Ranks | None:
        """This process's rank, when `torch.distributed` is initialized with more than one process (or when
        `rank`/`world` say so); None for a single process."""
        import sys

        dist = sys.modules.get("torch.distributed")
        if rank is None and world is None:
            if dist is None or not dist.is_available() or not dist.is_initialized():
                return None
            rank, world = dist.get_rank(), dist.get_world_size()
        if world is None or world <= 1:
            return None
        if rank is None or not 0 <= rank < world:
            raise ValueError(f"rank must be from 0 to {world - 1}; received {rank!r}")
        import torch.distributed

        if not torch.distributed.is_initialized():
            raise RuntimeError(
                f"rank={rank}, world={world} given, but torch.distributed is not initialized: call "
                "torch.distributed.init_process_group first (the ranks talk through it)"
            )
        return cls(rank, world, timeout=timeout)

    # -- sync points ------------------------------------------------------------------------------------------

    def exchange(self, batch: list[dict[str, Any]], every: int, flags: int, step: int) -> tuple[list[Any], int]:
        """At a sync point: post the leader's `batch` (commands as dicts), the interval after the NEXT sync point
        and `flags`, and return the batch and flags the leader posted at the previous sync point, which every rank
        applies now. Raises RankLost when a rank does not come."""
        import torch

        received: list[Any] = []
        got_flags = 0
        header = self._header_view
        try:
            if self._posted is not None:
                work, payload = self._posted
                self._posted = None
                work.wait()
                size, got_every, got_flags = int(header[0]), int(header[1]), int(header[2])
                self.every = max(1, min(got_every, MAX_EVERY))
                if size:  # commands travel: their bytes follow, in a blocking broadcast (only then)
                    buf = (
                        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                        if self.leader
                        else torch.empty(size, dtype=torch.uint8)
                    )
                    self._dist.broadcast(buf, src=0, group=self.group)
                    received = json.loads(bytes(buf.numpy()))
            payload = json.dumps(batch).encode() if (self.leader and batch) else b""
            if self.leader:
                header[0], header[1], header[2] = len(payload), every, flags
            self._posted = (self._dist.broadcast(self._header, src=0, group=self.group, async_op=True), payload)
        except RuntimeError as e:
            raise self._lost(step, e) from e
        self.syncs += 1
        return received, got_flags

    def finish(self, timeout: float = 10.0) -> None:
        """At close: let the last posted header arrive (every rank posted it at the same sync point)."""
        posted, self._posted = self._posted, None
        if posted is not None:
            try:
                posted[0].wait(datetime.timedelta(seconds=min(timeout, self.timeout)))
            except RuntimeError:
                pass

    def report_steps(self, step: int) -> None:
        """Every rank's step, on every rank (`steps`): for state.json and the tab, about once a second."""
        import torch

        mine = torch.tensor([step], dtype=torch.int64)
        out = [torch.empty(1, dtype=torch.int64) for _ in range(self.world)]
        try:
            self._dist.all_gather(out, mine, group=self.group)
        except RuntimeError as e:
            raise self._lost(step, e) from e
        self.steps = [int(t.item()) for t in out]

    def share(self, obj: Any, what: str) -> Any:
        """The leader's `obj` on every rank (once, at start: a pickled object, between processes of one job)."""
        box = [obj]
        try:
            self._dist.broadcast_object_list(box, src=0, group=self.group)
        except RuntimeError as e:
            raise self._lost(0, e, f"waiting for {what}") from e
        return box[0]

    def gather(self, obj: Any, step: int) -> list[Any] | None:
        """Every rank's `obj` (JSON values), on the leader; None elsewhere."""
        out: list[Any] | None = [None] * self.world if self.leader else None
        try:
            self._dist.gather_object(obj, out, dst=0, group=self.group)
        except RuntimeError as e:
            raise self._lost(step, e) from e
        return out

    def all_values(self, status: int, value: float, step: int) -> list[tuple[int, float]]:
        """Every rank's (status, value) of one metric at one step, on every rank."""
        import torch

        mine = torch.tensor([float(status), value], dtype=torch.float64)
        out = [torch.empty(2, dtype=torch.float64) for _ in range(self.world)]
        try:
            self._dist.all_gather(out, mine, group=self.group)
        except RuntimeError as e:
            raise self._lost(step, e) from e
        return [(int(t[0]), float(t[1])) for t in out]

    def _lost(self, step: int, e: BaseException, where: str | None = None) -> RankLost:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        self.lost = (
            f"rank {self.rank} of {self.world}: a rank did not reach "
            f"{where or f'the sync point at step {step}'} within {self.timeout:g} s (it died or hangs): {first}"
        )
        return RankLost(self.lost + "; control of this job is lost: the job must end")

    def pace(self, steps_per_sec: float) -> int:
        """The leader's interval to the next sync point, in calls of step()."""
        if steps_per_sec <= 0:
            return 1
        return max(1, min(round(steps_per_sec * SYNC_SECONDS), MAX_EVERY))  # 10 ms steps: every 2nd, not each

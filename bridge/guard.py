"""The divergence guard: a loss (or a metric marked `guard=True`) that is NaN or infinite, or that jumps above a
factor of its recent median (`guard_spike`, off by default), pauses the run at that step (or stops it).

It runs in `Bridge.step()` on every call, so it must cost next to nothing and never synchronize a device:

- a Python number is compared in place (`-inf < x < inf` is false for NaN and both infinities);
- a 0-d tensor in CPU memory is read where it lies (`item()` on a CPU tensor is a read of host memory: there is no
  device to wait for);
- a CUDA tensor is never read on the step that made it: it is copied with `non_blocking=True` into pinned host
  memory behind an event, and read at a later step once `event.query()` says the copy is done (`query` never
  waits). The check then lags the GPU by the steps it is behind (at most RING steps: when every slot is still in
  flight, that step's loss is not copied); the step of the NaN is the step whose loss was NaN;
- a loss on another device (mps, xla) is not checked: the note in state says so.

A trip hands a `pause` (or `stop`) command to the applier, the same path as any command, so it is journaled with its
cause and, on a distributed job, reaches every rank at the same sync point. The guard watches only on the leader.
"""

from __future__ import annotations

import math
import numbers
import statistics
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

INF = math.inf
RING = 8  # CUDA losses in flight at most
MODES = ("pause", "stop")


class Guard:
    def __init__(
        self,
        trip: Callable[[str, int, str, float], None],
        *,
        mode: str = "pause",
        spike: float | None = None,
        window: int = 50,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"guard must be True, False, 'pause' or 'stop'; received {mode!r}")
        if spike is not None and not (isinstance(spike, (int, float)) and spike > 1):
            raise ValueError(f"guard_spike must be a factor > 1 of the recent median (e.g. 10); received {spike!r}")
        self.mode = mode
        self.spike = spike
        self._trip = trip  # (what, step, reason, value)
        self._recent: deque[float] = deque(maxlen=max(5, window))
        self._median = INF
        self._since_median = 0
        self._ring: list[Any] = []
        self._head = self._tail = 0  # the next slot to fill; the oldest slot in flight
        self.tripped: dict[str, Any] | None = None
        self.metrics: set[str] = set()  # metrics marked guard=True: their values are checked too
        self.note: str | None = None

    # -- the per-step path ----------------------------------------------------------------------------------------

    def see(self, loss: Any, step: int) -> None:
        """Check one step's loss (`Bridge.step` checks a finite float itself and calls this for anything else)."""
        if loss.__class__ is float:
            value = loss
        else:
            try:
                if loss.is_cpu:
                    value = loss.item()
                elif loss.is_cuda:
                    self._device(loss, step)
                    return
                else:
                    self._unreadable(loss)
                    return
            except AttributeError:  # not a tensor: an int, a numpy scalar
                if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                    self._unreadable(loss)
                    return
                value = float(loss)
            except (RuntimeError, ValueError):  # item() of a tensor of more than one element
                self._unreadable(loss)
                return
        if value - value or self.spike is not None:  # x - x is 0.0 for every finite x, NaN otherwise
            self.check("loss", step, value)

    def check(self, what: str, step: int, value: float) -> None:
        """One value of `what` seen at `step`."""
        if not -INF < value < INF:
            self._fire(what, step, f"{what} is {value!r} at step {step}", value)
        elif self.spike is not None:
            self._spiked(what, step, value)

    def _spiked(self, what: str, step: int, value: float) -> None:
        recent = self._recent
        if len(recent) >= 5 and value > self.spike * self._median > 0:  # type: ignore[operator]
            self._fire(
                what,
                step,
                f"{what} {value:.4g} at step {step} is over {self.spike:g}x its recent median {self._median:.4g}",
                value,
            )
            return
        recent.append(value)
        self._since_median += 1
        if self._since_median >= 1 + len(recent) // 10:  # the median is refreshed every tenth of the window
            self._since_median = 0
            self._median = abs(statistics.median(recent))

    def _fire(self, what: str, step: int, reason: str, value: float) -> None:
        if self.tripped is not None and self.tripped.get("active"):
            return  # one trip until the run is resumed
        self.tripped = {"what": what, "step": step, "reason": reason, "value": value, "active": True}
        self._recent.clear()
        self._median = INF
        self._trip(what, step, reason, value)

    def watch(self, metric: str, on: bool) -> None:
        """Check `metric`'s values too (`add_metric(..., guard=True)`), or no longer."""
        if on:
            self.metrics.add(metric)
        else:
            self.metrics.discard(metric)

    def check_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """The values the guarded metrics wrote at this step (a scalar; anything else is not a guard's business)."""
        for name in self.metrics:
            m = metrics.get(name)
            if m is not None and m.last_step == step and isinstance(m.last_value, (int, float)):
                self.check(f"metric {name}", step, float(m.last_value))

    def rearm(self) -> None:
        """The run was resumed (or rewound): the next bad value trips again."""
        if self.tripped is not None:
            self.tripped["active"] = False
        for slot in self._ring:
            slot[2] = None  # losses in flight from before belong to the past
        self._tail = self._head

    def _unreadable(self, loss: Any) -> None:
        if self.note is None:
            where = getattr(getattr(loss, "device", None), "type", None)
            self.note = (
                f"the guard does not check this loss ({type(loss).__name__}"
                + (f" on {where}" if where else "")
                + "): pass a Python float, a 0-d CPU tensor or a 0-d CUDA tensor as loss="
            )

    # -- CUDA: copy now, read later ----------------------------------------------------------------------------------

    def _device(self, loss: Any, step: int) -> None:
        ring = self._ring
        if not ring:
            ring.extend(_slot() for _ in range(RING))
        while True:  # oldest first, the copies whose event says they landed: read from host memory, no wait
            slot = ring[self._tail]
            if slot[2] is None or not slot[1].query():
                break  # copies land in the order they were queued: the newer ones are not there yet either
            value, at = slot[0].item(), slot[2]
            slot[2] = None
            self._tail = (self._tail + 1) % RING
            self.check("loss", at, value)
        slot = ring[self._head]
        if slot[2] is not None:
            return  # the GPU is RING steps behind: this step's loss is not copied
        if loss.dim():
            self._unreadable(loss)
            return
        torch = sys.modules["torch"]
        with torch.no_grad():
            slot[0].copy_(loss, non_blocking=True)
        slot[1].record()
        slot[2] = step
        self._head = (self._head + 1) % RING

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "spike": self.spike,
            "tripped": self.tripped,
            "note": self.note,
            "metrics": sorted(self.metrics),
        }


class _Landed:
    """Where there is no CUDA (a test of the device path on CPU): a copy has landed when it returns."""

    def record(self) -> None:
        pass

    def query(self) -> bool:
        return True


def _slot() -> list[Any]:
    """[host buffer, event, step of the loss in flight or None]."""
    torch = sys.modules["torch"]
    cuda = torch.cuda.is_available()
    buf = torch.empty((), dtype=torch.float32, pin_memory=cuda)
    return [buf, torch.cuda.Event() if cuda else _Landed(), None]

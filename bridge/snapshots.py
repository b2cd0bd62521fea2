"""Snapshots: copies of what a rewind can restore, kept in CPU memory within a budget (optionally spilled to disk).

A snapshot holds the `state_dict()` of every target (the bound optimizers and schedulers, the namespace's `model`,
objects given to `bridge.track`), the registered hyperparameters' values and the RNG states (Python, numpy, torch,
and CUDA when it is in use). Tensors are copied to CPU memory; nothing else is shared with the live objects, so a
snapshot can be restored any number of times.

Memory is bounded by count and bytes: a new snapshot evicts the oldest ones until it fits, and one that alone is
larger than the byte budget is skipped with a note saying so (never an out-of-memory error). With `spill`, evicted
snapshots go to `.bidviz/snapshots/` instead of away, and one too large for memory is written there straight from
the live objects (no copy in memory); the disk keeps at most `max_count` files as well.

Only the training thread takes and restores snapshots (at step boundaries); `describe` may run in any thread.
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidviz.errors import ProtocolError

DEFAULT_BYTES = 1 << 30  # 1 GiB: a laptop keeps a few snapshots of a 100M-parameter model's weights
DEFAULT_COUNT = 16


@dataclass
class Snapshot:
    id: str
    step: int | None
    time: float
    reason: str
    command: str | None  # the id of the command it was taken right before
    nbytes: int
    hparams: dict[str, Any]
    states: dict[str, Any] | None = None  # target name -> copied state_dict; None once spilled to `path`
    rng: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "time": self.time,
            "reason": self.reason,
            "command": self.command,
            "bytes": self.nbytes,
            "where": "disk" if self.states is None else "memory",
            "targets": sorted(self.states) if self.states is not None else None,
        }


class SnapshotStore:
    def __init__(
        self,
        targets: Callable[[], dict[str, Any]],
        *,
        max_bytes: int = DEFAULT_BYTES,
        max_count: int = DEFAULT_COUNT,
        spill_dir: Path | None = None,
    ) -> None:
        if max_count < 1 or max_bytes < 0:
            raise ValueError(f"snapshot budget must be >= 1 snapshot and >= 0 bytes; received {max_count}, {max_bytes}")
        self._targets = targets
        self.max_bytes, self.max_count, self.spill_dir = max_bytes, max_count, spill_dir
        self._memory: OrderedDict[str, Snapshot] = OrderedDict()
        self._disk: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        self._counter = 0  # ids follow the order of commands, the same on every rank of a distributed job
        self.note: str | None = None  # why the last snapshot was skipped or spilled
        if spill_dir is not None:
            _sweep(spill_dir)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._memory.values())

    def take(self, step: int | None, reason: str, command: str | None, hparams: dict[str, Any]) -> Snapshot | None:
        """A new snapshot, or None (with `note` saying why) when it is larger than the whole budget."""
        targets = self._targets()
        live = {name: obj.state_dict() for name, obj in targets.items()}  # references: nothing copied yet
        size = _nbytes(live)
        self._counter += 1
        snap = Snapshot(f"s{self._counter}", step, time.time(), reason, command, size, dict(hparams), rng=_rng_state())
        if size > self.max_bytes:
            what = ", ".join(f"{n} {_nbytes(s) / 2**20:.0f} MiB" for n, s in live.items())
            if self.spill_dir is None:
                self.note = (
                    f"snapshot at step {step} skipped: it needs {size / 2**20:.0f} MiB ({what}), more than the budget "
                    f"of {self.max_bytes / 2**20:.0f} MiB; give Bridge(snapshot_bytes=...) more, or "
                    "snapshot_spill=True to write snapshots to .bidviz/snapshots/ on disk"
                )
                return None
            snap.states = live
            self._write(snap)  # straight from the live objects: no copy in memory
            self.note = f"snapshot {snap.id} ({size / 2**20:.0f} MiB) is larger than the memory budget: written to disk"
            with self._lock:
                self._add_disk(snap)
            return snap
        with self._lock:
            while self._memory and (len(self._memory) >= self.max_count or self.nbytes + size > self.max_bytes):
                self._evict()
        snap.states = {name: _copy_to_cpu(state) for name, state in live.items()}
        with self._lock:
            self._memory[snap.id] = snap
        self.note = None
        return snap

    def _evict(self) -> None:
        _, old = self._memory.popitem(last=False)
        if self.spill_dir is not None:
            self._write(old)
            self._add_disk(old)

    def _add_disk(self, snap: Snapshot) -> None:
        snap.states = None
        self._disk[snap.id] = snap
        while len(self._disk) > self.max_count:
            _, gone = self._disk.popitem(last=False)
            if gone.path is not None:
                gone.path.unlink(missing_ok=True)

    def _write(self, snap: Snapshot) -> None:
        import torch

        assert self.spill_dir is not None
        self.spill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.spill_dir / f"{snap.id}-{os.getpid()}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"states": snap.states, "rng": snap.rng}, tmp)
        os.replace(tmp, path)
        snap.path = path

    def find(self, *, to: int | None = None, before: str | None = None) -> Snapshot:
        """The snapshot taken right before command `before`, else the newest at or before step `to`, else the
        newest; ProtocolError (NoSnapshot) naming the snapshots there are."""
        with self._lock:
            every = sorted([*self._disk.values(), *self._memory.values()], key=lambda s: int(s.id[1:]))
        if before is not None:
            found = [s for s in every if s.command == before]
        elif to is not None:
            found = [s for s in every if s.step is not None and s.step <= to]
        else:
            found = every
        if not found:
            kept = ", ".join(f"{s.id} at step {s.step} ({s.reason})" for s in every[-8:]) or "none"
            wanted = f"before command {before}" if before else f"at or before step {to}" if to is not None else ""
            raise ProtocolError(f"no snapshot {wanted}; snapshots kept: {kept}".replace("  ", " "), type="NoSnapshot")
        return found[-1]

    def restore(self, snap: Snapshot) -> list[str]:
        """Load `snap` into the live targets and set the RNG states; the names restored."""
        states, rng = snap.states, snap.rng
        if states is None:
            import torch

            assert snap.path is not None
            saved = torch.load(snap.path, weights_only=False)  # our own file, in the owner's 0700 mailbox
            states, rng = saved["states"], saved["rng"]
        targets = self._targets()
        missing = sorted(set(states) - set(targets))
        if missing:
            raise ProtocolError(
                f"snapshot {snap.id} holds {', '.join(missing)}, which this run no longer has; nothing was restored",
                type="NoSnapshot",
            )
        for name, state in states.items():
            obj = targets[name]
            # A module copies values into its parameters; anything else (an optimizer) may keep the tensors it is
            # given, which training then changes in place: give it a copy, so the snapshot stays as it was.
            obj.load_state_dict(state if _is_module(obj) else _copy_to_cpu(state))
        _set_rng_state(rng)
        return sorted(states)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            kept = [s.public() for s in [*self._disk.values(), *self._memory.values()]]
        return {
            "max_bytes": self.max_bytes,
            "max_count": self.max_count,
            "bytes": self.nbytes,
            "spill": self.spill_dir is not None,
            "kept": kept,
            "note": self.note,
        }


def _sweep(spill_dir: Path) -> None:
    """Spilled snapshots of processes that ended (a snapshot dies with its process): removed, so a run that is
    restarted again and again does not fill its disk. Files of live processes (other ranks) are left alone."""
    try:
        names = os.listdir(spill_dir)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"s\d+-(\d+)\.(pt|tmp)", name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # alive (or another user's: not ours to remove)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            os.unlink(spill_dir / name)
        except OSError:
            pass


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _nbytes(obj: Any) -> int:
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size() * obj.numel())
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _copy_to_cpu(obj: Any) -> Any:
    """A copy sharing nothing with `obj`: tensors copied to CPU memory, arrays copied, the rest deep-copied."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if hasattr(obj, "copy") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return obj.copy()
    if isinstance(obj, Mapping):
        out = {k: _copy_to_cpu(v) for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list):
        return [_copy_to_cpu(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_copy_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None:
        state["numpy"] = np.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in state:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

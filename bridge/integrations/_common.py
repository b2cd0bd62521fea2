"""What the framework callbacks share: registering the user's own hyperparameters, finding a writer's directory,
and agreeing on one run directory across the ranks of a torch.distributed job."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from bidviz.bridge.core import Bridge

HParamSpecs = Mapping[str, Any]


def register_hparams(bridge: Bridge, specs: HParamSpecs | None, after_change: Callable[[], Any] | None = None) -> None:
    """`{"dropout": 0.1}` registers a value; `{"dropout": {"value": 0.1, "min": 0, "on_change": f}}` passes the
    rest of the dict on to `Bridge.hparam` (type, min, max, choices, on_change). `after_change()` runs after each
    change (Keras on JAX rebuilds its compiled step there)."""
    for name, spec in (specs or {}).items():
        if isinstance(spec, Mapping):
            if "value" not in spec:
                raise ValueError(f"hparams[{name!r}] needs a 'value' key; got keys {sorted(spec)}")
            kwargs = dict(spec)
            value = kwargs.pop("value")
        else:
            value, kwargs = spec, {}
        if after_change is not None:
            kwargs["on_change"] = _then(kwargs.get("on_change"), after_change)
        bridge.hparam(name, value, **kwargs)


def _then(first: Callable[[Any], Any] | None, then: Callable[[], Any]) -> Callable[[Any], None]:
    def on_change(value: Any) -> None:
        if first is not None:
            first(value)
        then()

    return on_change


def writer_dir(writer: Any) -> str | None:
    """The directory a torch or tensorboardX SummaryWriter (or a `bidviz.writers.Writer`) logs to, if it says."""
    logdir = getattr(writer, "log_dir", None) or getattr(writer, "logdir", None) or getattr(writer, "run_dir", None)
    return os.fspath(logdir) if logdir is not None else None


def run_dir_for(logdir: Any, writer: Any, writer_logdir: str | None, fallback: str) -> tuple[str, Any]:
    """Where a framework callback's bridge writes: through the framework's own TensorBoard writer (into its
    directory) unless the user named another `logdir`; else `logdir`; else `fallback` with a writer of our own."""
    if writer is not None and writer_logdir is not None:
        if logdir is None or os.path.realpath(logdir) == os.path.realpath(writer_logdir):
            return writer_logdir, writer
    if logdir is not None:
        return os.fspath(logdir), None
    return fallback, None


def job_rank() -> tuple[int, int]:
    """(rank, world size) of this process in an initialized torch.distributed job; (0, 1) without one. Never imports
    torch: a process that has not imported it has no job."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def run_dir_on_every_rank(choose: Callable[[], tuple[str, Any]]) -> tuple[str, Any]:
    """A framework callback's `(run_dir, writer)` on every rank of a torch.distributed job: `choose()` runs on rank 0
    alone (only there do the frameworks open their TensorBoard writers; elsewhere their loggers are dummies, and a
    directory chosen from a clock or a `version_N` count could differ), its directory is broadcast once, and the other
    ranks get no writer (their Bridge writes nothing: rank 0 writes the job's events). In a single process,
    `choose()` itself. Every rank must call it, at the same point. When `choose()` raises on rank 0, rank 0 re-raises
    it and the others raise a RuntimeError saying why, so no rank waits for a broadcast that never comes."""
    rank, world = job_rank()
    if world == 1:
        return choose()
    import torch.distributed as dist

    message: list[Any] = [None, None]
    error: Exception | None = None
    writer = None
    if rank == 0:
        try:
            message[0], writer = choose()
        except Exception as e:  # noqa: BLE001 - told to every rank below, then re-raised here
            error, message[1] = e, f"{type(e).__name__}: {e}"
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[1] is not None:
        raise RuntimeError(f"rank 0 could not choose the run directory: {message[1]}")
    return os.fspath(message[0]), writer

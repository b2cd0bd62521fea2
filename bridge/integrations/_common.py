"""What the framework callbacks share: registering the user's own hyperparameters, finding a writer's directory."""

from __future__ import annotations

import os
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

"""The registry: hyperparameters and metrics of one run, and the series that show their values.

Read from any thread under its lock (the mailroom checks names, the recorder snapshots state); changed only in
the training thread (registration, commands applied at a step boundary).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bidviz import protocol

from .hparams import HParam, HParamView
from .metrics import Metric, make_function


@dataclass
class Control:
    """Where the training loop stands; shared by the parts of one Bridge."""

    step: int = 0
    stepping: bool = False  # the first step was seen: hyperparameters are registered by then
    paused: bool = False
    should_stop: bool = False
    closed: bool = False
    steps_per_sec: float = 0.0

    @property
    def at(self) -> int | None:
        """The step a response or journal line names: None before the first step."""
        return self.step if self.stepping else None


class Registry:
    """Hyperparameters, metrics and the metric code's namespace."""

    def __init__(self, writer: Any, control: Control, namespace: dict[str, Any]) -> None:
        self.writer = writer
        self.control = control
        self.namespace = namespace
        self.lock = threading.RLock()
        self.hparams: dict[str, HParam] = {}
        self.metrics: dict[str, Metric] = {}
        self.active: list[Metric] = []  # running metrics, for the runner's loop
        self.overrides: dict[str, Any] = {}  # values tuned earlier in a resumed run, for hparams not yet registered
        self.view: Mapping[str, Any] = HParamView(self.hparams)
        self.changed = True  # what state.json shows changed since it was last written
        self.wrote = False  # series written since the writer's last flush
        self.on_metrics_changed: Any = None  # called when the set of running metrics changes (step pacing)
        self.on_restore_failed: Any = None  # called with (what, message) when a resumed value no longer fits
        self._session_written = False

    # -- names, for admission in the mailroom --------------------------------------------------------------------

    def metric_names(self) -> set[str]:
        with self.lock:
            return set(self.metrics)

    def hparam_names(self) -> set[str] | None:
        """Registered names, or None while the loop may still register more (before its first step)."""
        with self.lock:
            return set(self.hparams) if self.control.stepping else None

    # -- hyperparameters -------------------------------------------------------------------------------------------

    def register(self, hp: HParam, *, session: bool = True) -> None:
        """Add (or replace) a hyperparameter; `session=False` when more follow and the last one writes it."""
        with self.lock:
            existing = self.hparams.get(hp.name)
            if existing is not None:
                hp.changes = existing.changes
            self.hparams[hp.name] = hp
            if hp.name in self.overrides:
                self._restore(hp, self.overrides.pop(hp.name))
            if self.control.stepping:
                self.write_value(hp.name, hp.current())
            self.changed = True
        if session:
            self.write_session()

    def _restore(self, hp: HParam, value: Any) -> None:
        try:
            coerced = hp.coerce(value)
            old = hp.current()
            hp.assign(coerced)
        except Exception as e:  # noqa: BLE001 - the type or bounds changed since, or its setter refuses it
            if self.on_restore_failed is not None:
                self.on_restore_failed(
                    f"hparam {hp.name}",
                    f"the value {value!r:.80} tuned earlier in this run was not restored: {e}; it starts at "
                    f"{hp.current()!r:.80}",
                )
            return
        hp.record(plain_json(old), plain_json(coerced), self.control.step, "journal (resumed run)")

    def assign(self, name: str, value: Any, sender: str) -> dict[str, Any]:
        """Make an already coerced value current (the training thread), record and write it."""
        hp = self.hparams[name]
        old = hp.current()
        hp.assign(value)
        hp.record(plain_json(old), plain_json(value), self.control.step, sender)
        self.write_value(name, value)
        self.changed = True
        return {"name": name, "value": plain_json(value), "old": plain_json(old)}

    def write_value(self, name: str, value: Any) -> None:
        """A numeric value as a step of its `hparams/<name>` curve."""
        if isinstance(value, bool) or not isinstance(value, (int, float, tuple)):
            return
        step = self.control.step
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                self.writer.add_scalar(f"hparams/{name}/{i}", float(v), step)
        else:
            self.writer.add_scalar(f"hparams/{name}", float(value), step)
        self.wrote = True

    def write_session(self) -> None:
        """The starting values as TensorBoard's HPARAMS session, once: at the first step, or at the first
        registration after it for loops that bind their optimizer late (TensorBoard keeps the first one)."""
        if self._session_written or not self.control.stepping or not self.hparams:
            return
        flat = {}
        with self.lock:
            for name, hp in self.hparams.items():
                value = hp.current()
                if isinstance(value, tuple):
                    flat.update({f"{name}/{i}": v for i, v in enumerate(value)})
                else:
                    flat[name] = value
        self.writer.add_hparams_session(flat, [f"hparams/{n}" for n in flat])
        self._session_written = True

    def first_step(self) -> None:
        """At the first step: the HPARAMS session and the starting point of every curve."""
        self.control.stepping = True
        with self.lock:
            self.write_session()
            for name, hp in self.hparams.items():
                self.write_value(name, hp.current())
            self.changed = True

    # -- metrics ---------------------------------------------------------------------------------------------------

    def install(self, args: Mapping[str, Any], code: Any, sender: str, status: str = "running") -> Metric:
        if "torch" not in self.namespace and "torch" in sys.modules:  # imported after the bridge was made
            self.namespace["torch"] = sys.modules["torch"]
        name = args["name"]
        metric = Metric(
            name, args["code"], args["every"], args.get("kind", "auto"), make_function(code, self.namespace)
        )
        metric.sender, metric.status, metric.reduce = sender, status, args.get("reduce") or "rank0"
        metric.last_error = args.get("last_error")  # a restored metric's: why it was disabled
        with self.lock:
            self.metrics[name] = metric
            self.refresh()
        return metric

    def metric(self, name: str) -> Metric:
        from .effects import unknown_metric

        m = self.metrics.get(name)
        if m is None:
            raise unknown_metric(name, self.metrics)
        return m

    def refresh(self) -> None:
        """After a metric's status changed: the runner's list, and the step pacing."""
        with self.lock:
            self.active = [m for m in self.metrics.values() if m.status == "running"]
            self.changed = True
        if self.on_metrics_changed is not None:
            self.on_metrics_changed()

    # -- state.json ------------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "hparams": {n: _describe(hp) for n, hp in self.hparams.items()},
                "metrics": {n: m.describe() for n, m in self.metrics.items()},
            }


def _describe(hp: HParam) -> dict[str, Any]:
    try:
        return json_safe(hp.describe())  # type: ignore[no-any-return]
    except Exception as e:  # noqa: BLE001 - a user's getter (bind_hparam) failed: show why, keep the rest
        return {"value": None, "type": hp.type, "error": f"reading it failed: {type(e).__name__}: {e}"[:300]}


def plain_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def json_safe(obj: Any) -> Any:
    try:
        return protocol.to_json_value(obj)
    except Exception:  # noqa: BLE001 - a value a user's setter returned; shown as text
        return repr(obj)[:200]

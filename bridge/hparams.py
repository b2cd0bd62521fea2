"""Registered hyperparameters: types, bounds, validation, and binding to a torch optimizer (and its scheduler)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bidviz.protocol import ProtocolError

_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str, "tuple": tuple}
CHANGES_KEPT = 20


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (tuple, list)):
        return "tuple"
    item = getattr(value, "item", None)  # 0-d tensors and numpy scalars
    if callable(item):
        return type_name(item())
    raise TypeError(f"hyperparameter values must be float, int, bool, str or a tuple of numbers; got {value!r}")


@dataclass
class HParam:
    name: str
    value: Any
    type: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    on_change: Callable[[Any], Any] | None = None
    apply: Callable[[Any], Any] | None = None  # writes the value where it lives (an optimizer's param groups)
    read: Callable[[], Any] | None = None  # reads it back from there (schedulers change lr behind our back)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def current(self) -> Any:
        return self.read() if self.read is not None else self.value

    def assign(self, value: Any) -> None:
        """Make `value` (already coerced) current where it lives; undone if `on_change` raises."""
        old = self.current()
        if self.apply is not None:
            self.apply(value)
        self.value = value
        if self.on_change is not None:
            try:
                self.on_change(value)
            except BaseException:
                if self.apply is not None:
                    self.apply(old)
                self.value = old
                raise

    def coerce(self, value: Any) -> Any:
        """`value` converted to this hparam's type and checked, or ProtocolError saying what is expected."""
        expected = self._describe()
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(f"{self.name} takes {expected}; received {value!r}", type="WrongType")
            value = float(value)
            if not math.isfinite(value):
                raise ProtocolError(f"{self.name} must be finite; received {value!r}", type="OutOfBounds")
        elif self.type == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(f"{self.name} takes {expected}; received {value!r}", type="WrongType")
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise ProtocolError(f"{self.name} takes {expected}; received {value!r}", type="WrongType")
        elif self.type == "str":
            if not isinstance(value, str):
                raise ProtocolError(f"{self.name} takes {expected}; received {value!r}", type="WrongType")
        elif self.type == "tuple":
            n = len(self.value)
            if (
                not isinstance(value, (list, tuple))
                or len(value) != n
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            ):
                raise ProtocolError(f"{self.name} takes {expected}; received {value!r}", type="WrongType")
            if not all(math.isfinite(v) for v in value):
                raise ProtocolError(f"{self.name} must be finite; received {value!r}", type="OutOfBounds")
            value = tuple(float(v) for v in value)
        parts = value if isinstance(value, tuple) else (value,)
        for v in parts if self.type in ("float", "int", "tuple") else ():
            if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                raise ProtocolError(f"{self.name} must be {self._bounds()}; received {value!r}", type="OutOfBounds")
        if self.choices is not None and value not in self.choices:
            raise ProtocolError(
                f"{self.name} must be one of {', '.join(map(repr, self.choices))}; received {value!r}",
                type="OutOfBounds",
            )
        return value

    def _bounds(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        if self.min is not None:
            return f">= {self.min}"
        return f"<= {self.max}"

    def _describe(self) -> str:
        if self.type == "tuple":
            return f"a list of {len(self.value)} numbers"
        return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[self.type]

    def describe(self) -> dict[str, Any]:
        return {
            "value": self.current(),
            "type": self.type,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices is not None else None,
            "changes": self.changes[-CHANGES_KEPT:],
        }

    def record(self, old: Any, new: Any, step: int, sender: str) -> None:
        self.changes.append({"step": step, "old": old, "value": new, "time": time.time(), "sender": sender})
        del self.changes[:-CHANGES_KEPT]


class HParamView(Mapping[str, Any]):
    """Read-only mapping of current values: `bridge.hparams` and `hparams` in metric code."""

    def __init__(self, registry: dict[str, HParam]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Any:
        try:
            return self._registry[name].current()
        except KeyError:
            raise KeyError(f"no hyperparameter {name!r}; registered: {', '.join(self._registry) or '(none)'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry))

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return f"hparams({dict(self)!r})"


# Optimizer values that are not worth tuning live, or are not numbers.
_SKIP_KEYS = {"params", "name", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}
# Bounds of optimizer values by the names torch, Keras and optax give them; any other name is only >= 0.
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys(("momentum", "dampening", "alpha", "rho", "lr_decay", "ema_momentum"), (0.0, 1.0)),
    **dict.fromkeys(("betas", "beta_1", "beta_2", "beta1", "beta2", "b1", "b2"), (0.0, 0.999999)),
    "learning_rate_power": (None, 0.0),  # Keras' Ftrl: -0.5 by default, 0 for a fixed rate
}


def optimizer_hparams(optimizer: Any, scheduler: Any = None) -> list[HParam]:
    """One HParam per numeric param-group key (`lr` sets every group) and `key@i` per group when there are several."""
    groups = optimizer.param_groups
    out: list[HParam] = []
    for key, value in groups[0].items():
        if key in _SKIP_KEYS or isinstance(value, bool) or value is None:
            continue
        try:
            kind = type_name(value)
        except TypeError:
            continue
        if kind not in ("float", "int", "tuple"):
            continue
        if kind == "tuple" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            continue
        lo, hi = default_bounds(key)
        if kind == "int":
            kind = "float"  # lr=1 is still a float hyperparameter
        targets: list[tuple[str, list[int]]] = [(key, list(range(len(groups))))]
        if len(groups) > 1:
            targets += [(f"{key}@{i}", [i]) for i in range(len(groups)) if key in groups[i]]
        for name, idx in targets:
            out.append(
                HParam(
                    name=name,
                    value=_plain(groups[idx[0]][key]),
                    type=kind,
                    min=lo,
                    max=hi,
                    apply=_make_apply(optimizer, scheduler, key, idx),
                    read=_make_read(optimizer, key, idx),
                )
            )
    return out


def default_bounds(key: str) -> tuple[float | None, float | None]:
    """Default `(min, max)` of an optimizer value by its name, whatever the framework (`momentum`, `rho`: 0..1;
    `betas`, `beta_1`, `b1`...: 0..0.999999); any other name, `(0.0, None)`. The torch, Keras and JAX bindings all
    use it."""
    return _BOUNDS.get(key, (0.0, None))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _make_read(optimizer: Any, key: str, idx: list[int]) -> Callable[[], Any]:
    def read() -> Any:
        return _plain(optimizer.param_groups[idx[0]][key])

    return read


def _make_apply(optimizer: Any, scheduler: Any, key: str, idx: list[int]) -> Callable[[Any], None]:
    def apply(value: Any) -> None:
        for i in idx:
            group = optimizer.param_groups[i]
            old = _plain(group[key])
            current = group[key]
            if hasattr(current, "fill_"):  # a tensor lr (capturable / fused optimizers): keep the tensor
                current.fill_(value)
            else:
                group[key] = type(current)(value) if isinstance(current, tuple) else value
            if key == "lr" and scheduler is not None:
                rescale_scheduler(scheduler, i, old, value)

    return apply


def rescale_scheduler(scheduler: Any, group: int, old: float, new: float) -> None:
    """Make a set `lr` survive the scheduler's next step: scale what it computes lr from by new/old.

    Chainable schedulers read the group's lr and need nothing; closed-form ones (LambdaLR, CosineAnnealingLR,
    OneCycleLR, CyclicLR...) recompute from `base_lrs` or from values kept in the param group. A wrapper that keeps
    the torch scheduler in `.scheduler` (Accelerate's `AcceleratedScheduler`) is looked through.
    """
    scheduler = _unwrap_scheduler(scheduler)
    ratio = new / old if old else None

    def scaled(x: float) -> float:
        return x * ratio if ratio is not None else new

    todo, seen = [scheduler], []
    while todo:  # SequentialLR and ChainedScheduler hold others
        s = todo.pop()
        seen.append(s)
        todo.extend(getattr(s, "_schedulers", None) or ())
    for s in seen:
        for attr in ("base_lrs", "max_lrs", "_last_lr"):
            seq = getattr(s, attr, None)
            if isinstance(seq, list) and group < len(seq):
                seq[group] = scaled(seq[group])
        min_lrs = getattr(s, "min_lrs", None)  # ReduceLROnPlateau: keep its floor under the new lr
        if isinstance(min_lrs, list) and group < len(min_lrs) and min_lrs[group] > new:
            min_lrs[group] = new
    optimizer = getattr(scheduler, "optimizer", None)
    if optimizer is not None:
        pg = optimizer.param_groups[group]
        for k in ("initial_lr", "max_lr", "min_lr"):
            if isinstance(pg.get(k), (int, float)):
                pg[k] = scaled(pg[k])


def _unwrap_scheduler(scheduler: Any) -> Any:
    """The torch scheduler inside a wrapper that keeps it in `.scheduler` (Accelerate's `AcceleratedScheduler`, which
    has no `base_lrs` nor `optimizer` of its own), else `scheduler` itself."""
    while (inner := getattr(scheduler, "scheduler", None)) is not None and hasattr(inner, "get_last_lr"):
        scheduler = inner
    return scheduler

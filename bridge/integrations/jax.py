"""JAX/optax: hyperparameters that live in `optax.inject_hyperparams` state, swapped without recompiling.

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    opt_state = opt.init(params)
    with Bridge("runs/exp1") as bridge:
        hp = bind_optax(bridge, opt_state)                # lr, b1, b2, eps, ... from opt_state.hyperparams
        for step, batch in enumerate(batches):
            params, opt_state, loss, grads = train_step(params, opt_state, batch)   # your jitted step
            opt_state = hp.step(step, opt_state, params=params, grads=grads, loss=loss)
            if bridge.should_stop:
                break

`hp.step` is `bridge.step` plus: a changed value is written into the returned `opt_state` as an array of the same
shape, dtype and sharding as before, so the jitted step sees new *data*, never a new shape, and does not recompile.
The arrays you pass (`params`, `grads`, `opt_state`, `loss`) reach metric code as they are: nothing is copied to the
host unless a metric uses it (`host(x)` is `jax.device_get`). Single host only.

`learning_rate` is named `lr` (as everywhere in BIDViz); other names are optax's. When several inject_hyperparams
states hold the same name (an `optax.chain` of two), the name sets all of them and `name@i` the i-th. A value
given to inject_hyperparams as a schedule is recomputed by optax at every update, so setting it is refused with
a message (chain `optax.inject_hyperparams(optax.scale)(step_size=1.0)` for a tunable factor on top).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bidviz.bridge.core import Bridge
from bidviz.bridge.hparams import default_bounds
from bidviz.protocol import ProtocolError

__all__ = ["OptaxBinding", "bind_optax"]

Path = tuple[Any, ...]
RENAME = {"learning_rate": "lr"}


def bind_optax(bridge: Bridge, opt_state: Any) -> OptaxBinding:
    """Register the hyperparameters of every `optax.inject_hyperparams` state inside `opt_state`."""
    return OptaxBinding(bridge, opt_state)


class OptaxBinding:
    """The hyperparameters of an optax state, bound to a Bridge; `step()` returns the (possibly updated) state."""

    def __init__(self, bridge: Bridge, opt_state: Any) -> None:
        self.bridge = bridge
        self.opt_state = opt_state
        found = list(_find_inject_states(opt_state))
        if not found:
            raise ValueError(
                "no optax.inject_hyperparams state in opt_state; build the optimizer with it, e.g. "
                "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), so its hyperparameters live in the state"
            )
        self._paths = [path for path, _ in found]
        self._cache: dict[tuple[int, str], Any] = {}  # values only we change, as Python numbers
        self._last_scheduled: dict[tuple[int, str], Any] = {}
        owners: dict[str, list[int]] = {}
        for i, (_, node) in enumerate(found):
            scheduled = set(getattr(node, "hyperparams_states", None) or ())
            for key, value in node.hyperparams.items():
                if np.ndim(value) != 0:
                    continue
                owners.setdefault(key, []).append(i)
                # A scheduled value is read from the latest state when asked: optax rewrites it at every update.
                self._cache[(i, key)] = None if key in scheduled else _host_scalar(value)
        bridge.namespace.update(opt_state=opt_state, jax=jax, jnp=jnp, optax=optax, host=jax.device_get)
        for key, idx in owners.items():
            name = RENAME.get(key, key)
            is_scheduled = any(key in (getattr(found[i][1], "hyperparams_states", None) or ()) for i in idx)
            targets = [(name, idx)] + ([(f"{name}@{n}", [i]) for n, i in enumerate(idx)] if len(idx) > 1 else [])
            for hp_name, where in targets:
                lo, hi = default_bounds(key)
                setter = self._refuser(hp_name) if is_scheduled else self._setter(key, where)
                bridge.bind_hparam(hp_name, self._getter(key, where[0]), setter, min=lo, max=hi)

    def step(self, step: int | None, opt_state: Any, **context: Any) -> Any:
        """`bridge.step(step, opt_state=opt_state, **context)`; returns `opt_state` with any changed values."""
        self.opt_state = opt_state
        self.bridge.step(step, opt_state=opt_state, **context)
        return self.opt_state

    # -- hyperparameter access ------------------------------------------------------------------------

    def _getter(self, key: str, i: int) -> Callable[[], Any]:
        def get() -> Any:
            cached = self._cache[(i, key)]
            if cached is not None:
                return cached
            try:  # a scheduled value: the latest state's (a donated buffer may be gone: then the last one seen)
                value = _host_scalar(_get_path(self.opt_state, self._paths[i]).hyperparams[key])
            except (RuntimeError, ValueError, KeyError):
                return self._last_scheduled.get((i, key), 0.0)
            self._last_scheduled[(i, key)] = value
            return value

        return get

    def _setter(self, key: str, where: list[int]) -> Callable[[Any], None]:
        def set(value: Any) -> None:
            state = self.opt_state
            for i in where:
                node = _get_path(state, self._paths[i])
                old = node.hyperparams[key]
                hyperparams = {**node.hyperparams, key: _like(old, value)}
                state = _replace_path(state, self._paths[i], node._replace(hyperparams=hyperparams))
                self._cache[(i, key)] = value
            self.opt_state = state
            self.bridge.namespace["opt_state"] = state

        return set

    def _refuser(self, name: str) -> Callable[[Any], None]:
        def refuse(value: Any) -> None:
            raise ProtocolError(
                f"{name} is given to optax.inject_hyperparams as a schedule, which optax recomputes at every update, "
                f"so a value set here would be overwritten; to tune it live, chain "
                f"optax.inject_hyperparams(optax.scale)(step_size=1.0) after the optimizer and set step_size",
                type="NotSettable",
            )

        return refuse


def _host_scalar(value: Any) -> Any:
    arr = np.asarray(jax.device_get(value))
    return arr.item()


def _like(old: Any, value: Any) -> Any:
    """`value` as an array like `old`: same dtype, shape and placement (committed to its sharding or not), since jit
    keys its cache on them: new data for the compiled step, never a new signature. (optax's hyperparameters are
    never weakly typed: inject_hyperparams converts them to a dtype.)"""
    arr = np.asarray(value, dtype=old.dtype if hasattr(old, "dtype") else np.asarray(old).dtype)
    if getattr(old, "committed", False):
        return jax.device_put(arr, old.sharding)
    return jax.device_put(arr)


def _is_inject_state(node: Any) -> bool:
    fields = getattr(node, "_fields", None) or ()
    return "hyperparams" in fields and "inner_state" in fields


def _find_inject_states(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if _is_inject_state(node):
        yield path, node
    if isinstance(node, (tuple, list)):
        for i, child in enumerate(node):
            yield from _find_inject_states(child, (*path, i))
    elif isinstance(node, dict):
        for k, child in node.items():
            yield from _find_inject_states(child, (*path, k))


def _get_path(node: Any, path: Path) -> Any:
    for key in path:
        node = node[key]
    return node


def _replace_path(node: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        out = dict(node)
        out[head] = _replace_path(node[head], rest, new)
        return type(node)(out) if type(node) is not dict else out
    items = list(node)
    items[head] = _replace_path(items[head], rest, new)
    if hasattr(node, "_fields"):
        return type(node)(*items)
    return type(node)(items)

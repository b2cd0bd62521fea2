"""Keras 3 (any backend): `model.fit(..., callbacks=[BIDVizCallback("runs/exp1")])`.

Bound from `model.optimizer` when fitting starts: `lr` and the optimizer's other float settings (`momentum`,
`beta_1`, `beta_2`, `epsilon`, `weight_decay`, ... as Keras names them). Steps at every `on_train_batch_end`, with
the optimizer's own iteration count as the step (with `steps_per_execution=4` Keras calls it once per 4 iterations,
so counting calls would read and scale a schedule at the wrong iteration); a `stop` sets `model.stop_training`, so
Keras ends the fit its own way (`on_epoch_end`, `on_train_end`, the History).

A learning-rate *schedule* (`keras.optimizers.schedules.*`) is not ignored: the schedule is wrapped in
`ScaledSchedule`, which multiplies it by a factor (1.0 at first). `lr` reads the schedule's current value; setting
`lr` picks the factor that makes the current value what you set, so the schedule goes on from there (as a torch LR
scheduler does under BIDViz). The wrapper is removed after the fit if the factor is still 1.0; otherwise it stays,
so the tuned rate stays in effect (it serializes as `bidviz>ScaledSchedule`).

On the JAX backend the training state lives outside the model during an epoch: the bridge copies it back
(`model.jax_state_sync()`) before it applies a command or runs a metric, so changes and metric code see live
values. On JAX and TensorFlow, settings that are Python numbers inside the compiled step (`momentum`, `beta_1`, a
schedule's factor...) take effect by rebuilding the train function: one recompilation (a retrace on TensorFlow) per
change; `lr` as a variable needs none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras.optimizers.schedules import LearningRateSchedule

from bidviz import compat
from bidviz.bridge.core import Bridge
from bidviz.bridge.hparams import default_bounds
from bidviz.protocol import ProtocolError

from ._common import HParamSpecs, register_hparams

__all__ = ["BIDVizCallback", "ScaledSchedule"]

# Optimizer config entries that are floats but not worth tuning live (or not read at every step).
_SKIP = {"learning_rate", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor"}


@keras.saving.register_keras_serializable(package="bidviz")
class ScaledSchedule(LearningRateSchedule):  # type: ignore[misc]
    """`schedule(step) * scale`: how BIDViz makes `lr` settable when the optimizer was given a schedule."""

    def __init__(self, schedule: Any, scale: float = 1.0) -> None:
        self.schedule = schedule
        self.scale = float(scale)

    def __call__(self, step: Any) -> Any:
        value = self.schedule(step)
        return value if self.scale == 1.0 else value * self.scale

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "scale": self.scale}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledSchedule:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["scale"])


class BIDVizCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Attach a BIDViz bridge to `model.fit`.

    Args:
        logdir: the run directory. Keras' own TensorBoard callback writes training series to `<its log_dir>/train`:
            pass that directory to land in the same run.
        writer: a writer to write through (see `Bridge(writer=)`); by default the bridge makes its own.
        namespace: extra names for metric code and `eval`.
        hparams: your own tunable values, `{"dropout": 0.1}` or `{"dropout": {"value": 0.1, "on_change": f}}`
            (on JAX and TensorFlow, each change also rebuilds the compiled train step, so a layer setting changed by
            `f` counts).
        **bridge_kwargs: passed to `Bridge` (`secret`, `resume`, `poll_interval`, `hook_budget`, `flush_secs`).

    Metric code sees `model`, `optimizer`, `logs` (this batch's), `loss`, `batch` (its index in the epoch), `epoch`,
    `keras` and `ops` (`keras.ops`). The step is the optimizer's iteration count (`optimizer.iterations`).
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        writer: Any = None,
        namespace: Mapping[str, Any] | None = None,
        hparams: HParamSpecs | None = None,
        **bridge_kwargs: Any,
    ) -> None:
        super().__init__()
        self.logdir = logdir
        self.writer = writer
        self.namespace = dict(namespace or {})
        self.hparam_specs = hparams
        self.bridge_kwargs = bridge_kwargs
        self.bridge: Bridge | None = None
        self._fit_model: Any = None  # as Keras gave it: reading `self.model` on JAX syncs the training state
        self._step = 0  # the optimizer's iteration count at the last step boundary
        self._epoch = 0
        self._epoch_start = 0  # the iteration count when this epoch began
        self._jax = keras.backend.backend() == "jax"
        self._compiled = keras.backend.backend() in ("jax", "tensorflow")  # Python numbers are baked into the step

    # -- Keras hooks ----------------------------------------------------------------------------------

    def set_model(self, model: Any) -> None:
        """Keep the model as Keras gives it, to reach it without syncing the JAX state."""
        super().set_model(model)
        self._fit_model = model

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Start the bridge and bind the optimizer."""
        model = self.model  # syncs the JAX state, once
        optimizer = model.optimizer
        self._step = self._epoch_start = _count(optimizer.iterations)
        ns = {"model": model, "optimizer": optimizer, "keras": keras, "ops": keras.ops, **self.namespace}
        self.bridge = bridge = Bridge(self.logdir, writer=self.writer, namespace=ns, **self.bridge_kwargs)
        if self._jax:
            bridge.prepare = model.jax_state_sync
        self._bind_lr(bridge, model, optimizer)
        config = optimizer.get_config()
        for key, value in config.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, float) or not hasattr(optimizer, key):
                continue
            lo, hi = default_bounds(key)
            bridge.bind_hparam(key, _attr_getter(optimizer, key), self._attr_setter(optimizer, key), min=lo, max=hi)
        register_hparams(bridge, self.hparam_specs, after_change=self._retrace)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch
        if self._variables_live():  # on JAX too: Keras copies the training state back at the end of each epoch
            self._epoch_start = self._step = _count(self._fit_model.optimizer.iterations)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A step boundary: apply commands, run metrics; a `stop` sets `model.stop_training`."""
        bridge = self.bridge
        if bridge is None:
            return
        self._step = self._iterations(batch)
        loss = logs.get("loss") if logs else None
        bridge.step(self._step, logs=logs, loss=loss, batch=batch, epoch=self._epoch)
        if bridge.should_stop:
            self._fit_model.stop_training = True

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Close the bridge; an untouched schedule wrapper is taken off again."""
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        optimizer = self._fit_model.optimizer
        lr = compat.keras_lr_schedule(optimizer)
        if isinstance(lr, ScaledSchedule) and lr.scale == 1.0:
            optimizer.learning_rate = lr.schedule

    # -- binding --------------------------------------------------------------------------------------

    def _bind_lr(self, bridge: Bridge, model: Any, optimizer: Any) -> None:
        schedule = compat.keras_lr_schedule(optimizer)
        if schedule is not None:
            wrapped = schedule if isinstance(schedule, ScaledSchedule) else ScaledSchedule(schedule)
            optimizer.learning_rate = wrapped  # Keras 3's public setter takes a schedule

            def get() -> float:  # from our step count: on JAX the iterations variable is empty during an epoch
                return _host(wrapped(self._step))

            def set(value: float) -> None:
                base = _host(wrapped.schedule(self._step))
                if not base or not math.isfinite(base):
                    raise ProtocolError(
                        f"the learning-rate schedule gives {base} at this step, so lr cannot be scaled to {value}",
                        type="NotSettable",
                    )
                wrapped.scale = value / base
                self._retrace()

            bridge.bind_hparam("lr", get, set, type="float", min=0.0)
            return
        lr = optimizer.learning_rate  # public: the variable itself when it is one, else a callable's current value
        if isinstance(lr, keras.Variable):
            last = [_host(lr)]

            def get_variable() -> float:
                if self._variables_live():
                    try:
                        last[0] = _host(lr)
                    except (TypeError, AttributeError):  # emptied by the JAX trainer meanwhile
                        pass
                return last[0]

            def set_variable(value: float) -> None:
                optimizer.learning_rate = value
                last[0] = value

            bridge.bind_hparam("lr", get_variable, set_variable, type="float", min=0.0)
        else:  # a plain callable, whose value the public getter gives

            def refuse(value: float) -> None:
                raise ProtocolError(
                    "the optimizer's learning_rate is a plain callable, which BIDViz cannot change; give the "
                    "optimizer a float or a keras.optimizers.schedules.LearningRateSchedule",
                    type="NotSettable",
                )

            bridge.bind_hparam("lr", lambda: _host(optimizer.learning_rate), refuse, type="float", min=0.0)

    def _iterations(self, batch: int) -> int:
        """The optimizer's iteration count after this batch. Keras calls `on_train_batch_end` once per
        `steps_per_execution` iterations, with the index of the last one."""
        if self._variables_live():
            return _count(self._fit_model.optimizer.iterations)
        return self._epoch_start + batch + 1  # JAX during an epoch: the counter is held outside the model

    def _variables_live(self) -> bool:
        """False while the JAX trainer holds the training state outside the model's (then empty) variables."""
        return not self._jax or compat.keras_jax_state_synced(self._fit_model)

    def _attr_setter(self, optimizer: Any, key: str) -> Callable[[Any], None]:
        def set(value: Any) -> None:
            setattr(optimizer, key, value)
            self._retrace()

        return set

    def _retrace(self) -> None:
        """A Python number changed inside the compiled train step (JAX, TensorFlow): rebuild it (one recompilation)."""
        model = self._fit_model
        if self._compiled and getattr(model, "train_function", None) is not None:
            model.make_train_function(force=True)


def _attr_getter(optimizer: Any, key: str) -> Callable[[], Any]:
    return lambda: float(getattr(optimizer, key))


def _host(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))


def _count(value: Any) -> int:
    return int(keras.ops.convert_to_numpy(value))

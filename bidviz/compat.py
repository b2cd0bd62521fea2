"""Every reach into another library's private parts, in one place. Depends on nothing of ours but `bidviz.errors`.

Each access is one named function: its docstring says what it reaches for, which library version it was checked
against (`tests/test_compat.py` runs each against the installed version), and what it does when the private name is
gone: a public route, a safe default, or a `CompatError` that says what was missing. The libraries are imported
inside the functions that need them, so importing this module never pulls in torch, Keras or transformers.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from bidviz.errors import BIDVizError

__all__ = [
    "CompatError",
    "hf_callbacks_of_caller",
    "keras_jax_state_synced",
    "keras_lr_schedule",
    "tbx_write_event",
    "thread_count",
    "torch_file_writer",
]


class CompatError(BIDVizError, RuntimeError):
    """Another library no longer has what BIDViz relies on, and no public route stands in; says what was missing."""

    default_type = "CompatError"


# -- tensorboardX ------------------------------------------------------------------------------------------------


def tbx_write_event(writer: Any, event: Any) -> bool:
    """Write one `Event` through a tensorboardX `SummaryWriter` so that the writer's next `flush()` puts it on disk.

    Private route (checked against tensorboardX 2.6.5): `writer._get_file_writer().event_writer._ev_writer`, the
    `EventsWriter` behind the queue, which has its own lock. tensorboardX's `flush()` flushes that file without
    waiting for the queue, so an event queued just before a flush could stay unwritten.
    Fallback, when that chain is missing: the public `FileWriter.add_event` (through the queue; the event is on disk
    once tensorboardX's own flush thread gets to it, within the writer's `flush_secs`).

    Returns True when the event went past the queue, False when it was queued. Raises `CompatError` when the writer
    has no file writer at all (closed, and no way to reopen it).
    """
    get_file_writer = getattr(writer, "_get_file_writer", None)
    file_writer = get_file_writer() if callable(get_file_writer) else getattr(writer, "file_writer", None)
    if file_writer is None:
        raise CompatError(
            f"the tensorboardX writer {type(writer).__qualname__} has no file writer (was it closed?); expected "
            "SummaryWriter.file_writer or SummaryWriter._get_file_writer()"
        )
    events_writer = getattr(getattr(file_writer, "event_writer", None), "_ev_writer", None)
    write_event = getattr(events_writer, "write_event", None)
    if callable(write_event):
        write_event(event)
        return True
    file_writer.add_event(event)
    return False


# -- torch.utils.tensorboard ---------------------------------------------------------------------------------------


def torch_file_writer(writer: Any) -> Any:
    """The `FileWriter` of a `torch.utils.tensorboard.SummaryWriter` (its `add_summary` and `add_event` are public).

    Public route (checked against torch 2.13.0): the `file_writer` attribute, set while the writer is open.
    Fallback, after the writer was closed (`file_writer` is None): the private `_get_file_writer()`, which reopens
    it in a new event file, as torch's own `add_*` methods do. Raises `CompatError` when neither is there.
    """
    file_writer = getattr(writer, "file_writer", None)
    if file_writer is not None:
        return file_writer
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if callable(get_file_writer):
        return get_file_writer()
    raise CompatError(
        f"the torch writer {type(writer).__qualname__} has no file writer; expected SummaryWriter.file_writer or "
        "SummaryWriter._get_file_writer()"
    )


# -- Keras 3 -------------------------------------------------------------------------------------------------------


def keras_lr_schedule(optimizer: Any) -> Any:
    """The `keras.optimizers.schedules.LearningRateSchedule` a Keras optimizer was given, or None when its learning
    rate is a variable (a float) or a plain callable. Set a schedule back with the public setter,
    `optimizer.learning_rate = schedule`.

    Private route (checked against Keras 3.15.1): `optimizer._learning_rate`. Keras has no public getter for the
    schedule itself: `optimizer.learning_rate` evaluates it at the current iteration.
    Fallback, when that attribute is missing: the schedule rebuilt from `optimizer.get_config()["learning_rate"]`
    (an equal copy, not the same object: set it back to make it the one in use), or None when that fails.
    """
    from keras.optimizers.schedules import LearningRateSchedule

    held = getattr(optimizer, "_learning_rate", _MISSING)
    if held is not _MISSING:
        return held if isinstance(held, LearningRateSchedule) else None
    try:
        config = optimizer.get_config().get("learning_rate")
        if not isinstance(config, dict):
            return None
        from keras.optimizers.schedules import deserialize

        schedule = deserialize(config)
    except Exception:  # an unregistered custom schedule, or a config Keras cannot read back
        return None
    return schedule if isinstance(schedule, LearningRateSchedule) else None


def keras_jax_state_synced(model: Any) -> bool:
    """Whether a Keras model's variables hold the live training state. On the JAX backend, during an epoch the
    trainer keeps the state outside the model and leaves the model's variables empty until `jax_state_sync()`.

    Private route (checked against Keras 3.15.1, JAX backend): `model._jax_state_synced`. Other backends have no such
    flag, and neither may a later Keras.
    Fallback, when the flag is missing: True (read the variables; a reader must then expect an emptied variable to
    raise).
    """
    return bool(getattr(model, "_jax_state_synced", True))


# -- Hugging Face transformers -------------------------------------------------------------------------------------


def hf_callbacks_of_caller(max_depth: int = 8) -> list[Any] | None:
    """The callbacks of the `transformers` Trainer whose `CallbackHandler` is calling us, found among the callers'
    frames: a callback is not told about the others, but `CallbackHandler.call_event` calls each one directly.

    A last resort: give the callback the trainer (`trainer.callback_handler.callbacks` is public) or a writer instead.
    Private route (checked against transformers 5.24.0): the `self` local of the `call_event` frame, a
    `transformers.trainer_callback.CallbackHandler`, within `max_depth` frames of the caller.
    Fallback: None when there is no such frame (not called from a Trainer, or frames are not inspectable).
    """
    from transformers.trainer_callback import CallbackHandler

    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None  # our caller
        for _ in range(max_depth):
            if frame is None:
                return None
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler):
                return list(handler.callbacks)
            frame = frame.f_back
        return None
    finally:
        del frame  # a frame held in a local would keep the callers' locals alive


class _Missing:
    pass


_MISSING = _Missing()


def thread_count() -> Callable[[], int]:
    """A function counting the threads alive, as `threading.active_count()` does, without its lock: the length of
    threading's private `_active` and `_limbo` dicts (each `len` is atomic), for a caller that counts at every few
    steps. Checked against CPython 3.10-3.13's threading; `threading.active_count` itself where those are missing."""
    active, limbo = getattr(threading, "_active", None), getattr(threading, "_limbo", None)
    if not isinstance(active, dict) or not isinstance(limbo, dict):
        return threading.active_count

    def count() -> int:
        return len(active) + len(limbo)

    return count

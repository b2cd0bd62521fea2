"""`bidviz.compat` against the installed libraries: each private route still works (and is the one taken), and each
fallback does what its docstring says when the private name is gone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bidviz import compat
from bidviz.writers import read_scalars, summaries


def test_importing_compat_pulls_in_no_library() -> None:
    probe = "import sys, bidviz.compat; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {})))"
    libs = {"torch", "keras", "transformers", "tensorboardX", "tensorboard", "jax", "tensorflow"}
    out = subprocess.run([sys.executable, "-c", probe.format(libs)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


# -- tensorboardX --------------------------------------------------------------------------------------------------


def _tbx_event(tag: str, value: float, step: int) -> Any:
    from tensorboardX.proto.event_pb2 import Event

    return Event.FromString(summaries.event(summaries.scalar_value(tag, value), step))


def test_tbx_write_event_goes_past_the_queue(tmp_path: Path) -> None:
    tensorboardX = pytest.importorskip("tensorboardX")
    writer = tensorboardX.SummaryWriter(str(tmp_path), flush_secs=3600, max_queue=1000)
    try:
        assert compat.tbx_write_event(writer, _tbx_event("x", 1.5, 3)) is True
        writer.flush()  # does not wait for the queue: only an event written past it is on disk now
        assert read_scalars(tmp_path)["x"][0][::2] == (3, 1.5)
    finally:
        writer.close()


def test_tbx_write_event_falls_back_to_the_public_add_event(tmp_path: Path) -> None:
    tensorboardX = pytest.importorskip("tensorboardX")
    writer = tensorboardX.SummaryWriter(str(tmp_path), flush_secs=3600)
    # The writer as a later tensorboardX might have it: no _get_file_writer, a file writer with only add_event.
    public_only = SimpleNamespace(file_writer=SimpleNamespace(add_event=writer.file_writer.add_event))
    assert compat.tbx_write_event(public_only, _tbx_event("y", 2.0, 4)) is False
    writer.close()  # waits for the queue
    assert read_scalars(tmp_path)["y"][0][::2] == (4, 2.0)


def test_tbx_write_event_without_a_file_writer_says_what_is_missing() -> None:
    with pytest.raises(compat.CompatError, match="no file writer"):
        compat.tbx_write_event(SimpleNamespace(file_writer=None), object())


# -- torch.utils.tensorboard ---------------------------------------------------------------------------------------


def test_torch_file_writer_is_the_public_attribute_and_reopens_after_close(tmp_path: Path) -> None:
    tb = pytest.importorskip("torch.utils.tensorboard")
    writer = tb.SummaryWriter(str(tmp_path))
    try:
        assert compat.torch_file_writer(writer) is writer.file_writer
        writer.close()
        assert writer.file_writer is None
        reopened = compat.torch_file_writer(writer)  # the private fallback, as torch's own add_* do
        assert reopened is not None and reopened is writer.file_writer
    finally:
        writer.close()


def test_torch_file_writer_without_either_route_says_what_is_missing() -> None:
    with pytest.raises(compat.CompatError, match="file_writer"):
        compat.torch_file_writer(SimpleNamespace(file_writer=None))


# -- Keras 3 (in a subprocess: the backend is chosen once per process, before keras is imported) --------------------

KERAS_CHECKS = """
import json
import keras
import numpy as np
from bidviz import compat
from bidviz.integrations.keras import ScaledSchedule

out = {"backend": keras.backend.backend()}
decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
with_schedule = keras.optimizers.SGD(learning_rate=decay)
out["schedule_is_same_object"] = compat.keras_lr_schedule(with_schedule) is decay
out["float_gives_none"] = compat.keras_lr_schedule(keras.optimizers.SGD(learning_rate=0.1)) is None
out["callable_gives_none"] = compat.keras_lr_schedule(keras.optimizers.SGD(learning_rate=lambda: 0.01)) is None

# The public setter takes a schedule, and the private getter sees it.
with_schedule.learning_rate = ScaledSchedule(decay, 2.0)
held = compat.keras_lr_schedule(with_schedule)
out["set_back"] = [type(held).__name__, held.schedule is decay, held.scale]

# Fallback: an optimizer without `_learning_rate` (its config still there): an equal schedule, rebuilt.
class NoPrivate:
    def __init__(self, optimizer):
        self.get_config = optimizer.get_config

rebuilt = compat.keras_lr_schedule(NoPrivate(keras.optimizers.SGD(learning_rate=decay)))
out["rebuilt"] = [type(rebuilt).__name__, rebuilt is decay, rebuilt.get_config() == decay.get_config()]
rebuilt = compat.keras_lr_schedule(NoPrivate(with_schedule))
out["rebuilt_ours"] = [type(rebuilt).__name__, rebuilt.scale, type(rebuilt.schedule).__name__]
out["rebuilt_float"] = compat.keras_lr_schedule(NoPrivate(keras.optimizers.SGD(learning_rate=0.1)))

# The JAX trainer's flag: unsynced during an epoch (so the private name is read), True without it.
seen = []

class Probe(keras.callbacks.Callback):
    def set_model(self, model):
        super().set_model(model)
        self.raw = model

    def on_train_batch_end(self, batch, logs=None):
        seen.append(compat.keras_jax_state_synced(self.raw))

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
model.fit(np.zeros((8, 3)), np.zeros((8, 1)), batch_size=2, epochs=1, verbose=0, callbacks=[Probe()])
out["synced_during_epoch"] = sorted(set(seen))
out["flag_missing"] = compat.keras_jax_state_synced(object())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def keras_checks() -> dict[str, Any]:
    missing = [name for name in ("keras", "jax") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KERAS_CHECKS)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_keras_lr_schedule_reads_the_schedule_itself(keras_checks: dict[str, Any]) -> None:
    assert keras_checks["backend"] == "jax"
    assert keras_checks["schedule_is_same_object"] is True
    assert keras_checks["float_gives_none"] is True
    assert keras_checks["callable_gives_none"] is True
    assert keras_checks["set_back"] == ["ScaledSchedule", True, 2.0]


def test_keras_lr_schedule_falls_back_to_the_config(keras_checks: dict[str, Any]) -> None:
    assert keras_checks["rebuilt"] == ["ExponentialDecay", False, True]
    assert keras_checks["rebuilt_ours"] == ["ScaledSchedule", 2.0, "ExponentialDecay"]
    assert keras_checks["rebuilt_float"] is None


def test_keras_jax_state_synced_reads_the_trainer_flag(keras_checks: dict[str, Any]) -> None:
    assert keras_checks["synced_during_epoch"] == [False]
    assert keras_checks["flag_missing"] is True


# -- Hugging Face transformers -------------------------------------------------------------------------------------


def test_hf_callbacks_of_caller_finds_the_handler_calling_us() -> None:
    pytest.importorskip("transformers")
    from transformers import TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    found: dict[str, Any] = {}

    class Probe(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            found["near"] = self.lookup(8)
            found["too_shallow"] = self.lookup(1)

        def lookup(self, depth: int) -> list[Any] | None:
            return compat.hf_callbacks_of_caller(depth)

    probe = Probe()
    handler = CallbackHandler([DefaultFlowCallback(), probe], None, None, None, None)
    handler.on_train_begin(SimpleNamespace(), TrainerState(), TrainerControl())
    assert found["near"] == handler.callbacks and found["near"] is not handler.callbacks
    assert found["too_shallow"] is None
    assert compat.hf_callbacks_of_caller() is None  # not called from a Trainer


def test_thread_count_reads_threadings_own_count_and_follows_it() -> None:
    import threading

    count = compat.thread_count()
    assert count is not threading.active_count, "the lock-free route is the one taken on this Python"
    release = threading.Event()
    started = [threading.Thread(target=release.wait) for _ in range(5)]
    before = count()
    assert before == threading.active_count()
    for thread in started:
        thread.start()
    assert count() == threading.active_count() == before + 5
    release.set()
    for thread in started:
        thread.join()
    assert count() == threading.active_count() == before

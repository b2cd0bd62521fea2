"""Keras 3: examples/keras_digits.py trains in a subprocess with BIDVizCallback (torch and TensorFlow backends with an
LR schedule, JAX backend with a plain learning rate; on TensorFlow with Keras's own TensorBoard callback writing into
the same run); the CLI drives it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from integration_checks import (
    add_metric,
    eval_value,
    event_files,
    pause_resume,
    scalars,
    set_hparam,
    stop,
    wait_metric_values,
)

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("keras"), reason="keras is not installed")

DECAY = 0.999  # the example's ExponentialDecay(decay_steps=1, decay_rate=0.999)
STEPS_PER_EPOCH = 24  # 1500 samples in batches of 64

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.skipif(not importlib.util.find_spec("torch"), reason="no torch")),
    pytest.param("jax", marks=pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="no jax")),
    pytest.param("tensorflow", marks=pytest.mark.skipif(not importlib.util.find_spec("tensorflow"), reason="no TF")),
]
COMPILED = BACKENDS[1:]  # backends whose train step is compiled, where steps_per_execution runs several per call


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_callback_end_to_end(start_training, backend: str) -> None:  # type: ignore[no-untyped-def]
    schedule = backend != "jax"  # the schedule path on torch and TF, the variable path (and state sync) on JAX
    args = ["--steps", "0", "--delay", "0.02", "--quiet"] + (["--schedule"] if schedule else [])
    keras_tensorboard = backend == "tensorflow"  # Keras's own TensorBoard callback logs too, into <run>/train
    if keras_tensorboard:
        args.append("--tensorboard")
    training = start_training("keras_digits.py", f"keras_{backend}", *args, env={"KERAS_BACKEND": backend})
    if keras_tensorboard:
        training.run_dir = training.run_dir / "train"  # the bridge joins Keras's training run
    run = training.run_dir
    training.wait_live()

    assert eval_value(run, "keras.backend.backend(), type(model).__name__, model.get_layer('hidden').units") == (
        backend,
        "Sequential",
        64,
    )
    assert eval_value(run, "sorted(bridge.hparams)") == ["dropout", "lr", "momentum"]

    response = set_hparam(run, "lr", 0.5)
    if schedule:
        assert eval_value(run, "type(optimizer._learning_rate).__name__") == "ScaledSchedule"
        training.wait_steps(5)
        it, lr = eval_value(run, "int(optimizer.iterations), float(optimizer.learning_rate)")
        assert it >= response["step"] + 5
        assert lr == pytest.approx(0.5 * DECAY ** (it - response["step"]), rel=1e-3), (it, response["step"], lr)
    else:
        # Past an epoch end, where Keras copies the JAX training state back into the variables: the state held 0.5.
        training.wait_steps(STEPS_PER_EPOCH + 2)
        assert eval_value(run, "round(float(optimizer.learning_rate), 6)") == 0.5
        before = eval_value(run, "id(model.train_function)")
        set_hparam(run, "momentum", 0.5)
        assert eval_value(run, "id(model.train_function)") != before  # rebuilt: the new momentum is compiled in
        training.wait_steps(STEPS_PER_EPOCH + 2)
        assert eval_value(run, "round(float(optimizer.momentum), 6)") == 0.5
    set_hparam(run, "dropout", 0.3)
    assert eval_value(run, "model.get_layer('drop').rate") == 0.3

    add_metric(run, "kernel_norm", "ops.norm(model.get_layer('hidden').kernel)")
    add_metric(run, "loss_x100", "logs['loss'] * 100")
    wait_metric_values(training, "kernel_norm")
    wait_metric_values(training, "loss_x100")

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command)" in out, out

    assert len(event_files(run)) == (2 if keras_tensorboard else 1), list(run.iterdir())
    series = scalars(run)
    for tag in ("bidviz/kernel_norm", "bidviz/loss_x100", "hparams/lr", "hparams/dropout"):
        assert series.get(tag), f"{tag} missing; tags: {sorted(series)}"
    assert series["hparams/lr"][-1][2] == pytest.approx(0.5)
    norms = [v for _, _, v in series["bidviz/kernel_norm"]]
    assert len(set(norms)) > 1, norms  # the weights it sees are live, not a stale copy
    if keras_tensorboard:
        _check_keras_tensorboard_series(run, series, response["step"])


def _check_keras_tensorboard_series(run: Path, series: dict[str, list[tuple[int, float, float]]], set_at: int) -> None:
    """Keras's TensorBoard callback and the bridge wrote one run: Keras's series agree with the bridge's (its batch
    loss with the bridge's metric of it, step for step; its epoch learning rate with the rate set through BIDViz), and
    TensorBoard's own loader reads every series of both files as our reader does."""
    for tag in ("batch_loss", "batch_accuracy", "epoch_loss", "epoch_learning_rate"):
        assert series.get(tag), f"Keras's {tag} missing; tags: {sorted(series)}"
    keras_loss = {step: value for step, _, value in series["batch_loss"]}
    ours = [(step, value) for step, _, value in series["bidviz/loss_x100"]]
    assert len(ours) >= 5 and all(step in keras_loss for step, _ in ours), (ours, sorted(keras_loss)[-5:])
    for step, value in ours:  # the same step numbers: Keras counts batches, the bridge the optimizer's iterations
        assert value == pytest.approx(100 * keras_loss[step], rel=1e-5), step
    epochs = series["epoch_learning_rate"][:-1]  # the last epoch was cut short by the stop
    assert any((e + 1) * STEPS_PER_EPOCH > set_at for e, _, _ in epochs), (epochs, set_at)
    for epoch, _, lr in epochs:
        it = (epoch + 1) * STEPS_PER_EPOCH  # the iteration count at that epoch's end
        expected = 0.5 * DECAY ** (it - set_at) if it >= set_at else 0.05 * DECAY**it  # set at it: 0.5 from it on
        assert lr == pytest.approx(expected, rel=1e-5), (epoch, it, set_at, lr)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag, points in series.items():
        if tag in tags["scalars"]:  # ours
            theirs = [(e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag)]
        else:  # Keras's: TF2 tensor scalars
            events = accumulator.Tensors(tag)
            theirs = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events]
        np.testing.assert_allclose(np.array(points), np.array(theirs), rtol=1e-6, err_msg=tag)


@pytest.mark.parametrize("backend", COMPILED)
def test_keras_steps_per_execution_steers_the_schedule_at_the_optimizers_iteration(  # type: ignore[no-untyped-def]
    start_training, backend: str
) -> None:
    """steps_per_execution=4: Keras calls the callback once per 4 iterations; the step is the optimizer's own count,
    so a set lr scales the schedule at the iteration it is applied (counting calls set it about 4x too early)."""
    args = ["--steps", "0", "--delay", "0.02", "--quiet", "--schedule", "--steps-per-execution", "4"]
    training = start_training("keras_digits.py", f"spe_{backend}", *args, env={"KERAS_BACKEND": backend})
    run = training.run_dir
    training.wait_state(lambda s: (s.get("step") or 0) >= 60, "60 iterations")
    response = set_hparam(run, "lr", 0.001)
    assert response["step"] % 4 == 0, response  # a boundary between two executions of 4 steps
    step, it, lr = eval_value(run, "step, int(optimizer.iterations), float(optimizer.learning_rate)")
    assert step == it and it % 4 == 0, (step, it)
    assert 0 <= it - response["step"] <= 200, (it, response["step"])
    assert lr == pytest.approx(0.001 * DECAY ** (it - response["step"]), rel=1e-4), (it, response["step"], lr)
    stop(training)

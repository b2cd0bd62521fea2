"""Hugging Face Accelerate without Trainer: examples/accelerate_loop.py (a plain loop with `accelerator.backward`,
gradient accumulation, a prepared optimizer and LambdaLR scheduler) steered with `bind_optimizer` through the CLI."""

from __future__ import annotations

import importlib.util

import pytest
from integration_checks import add_metric, eval_value, event_files, pause_resume, scalars, set_hparam, stop

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("accelerate"), reason="accelerate is not installed")

DECAY = 0.999  # the example's LambdaLR: lr = base * DECAY**step


def test_accelerate_loop_a_set_lr_survives_the_wrapped_scheduler(start_training) -> None:  # type: ignore[no-untyped-def]
    args = ["--steps", "0", "--delay", "0.01", "--accumulation", "2", "--quiet"]
    training = start_training("accelerate_loop.py", "accelerate", *args)
    run = training.run_dir
    training.wait_live()
    assert eval_value(run, "type(optimizer).__name__, type(scheduler).__name__") == (
        "AcceleratedOptimizer",
        "AcceleratedScheduler",
    )
    add_metric(run, "lr_now", "optimizer.param_groups[0]['lr']")
    training.wait_steps(3)

    response = set_hparam(run, "lr", 0.01)
    set_at = response["step"]
    training.wait_steps(10)
    # LambdaLR recomputes lr from its base_lrs at every step: unless the base inside Accelerate's wrapper was rescaled,
    # lr would jump back to 0.05 * DECAY**step at the next step.
    step, lr, last_epoch = eval_value(run, "step, optimizer.param_groups[0]['lr'], scheduler.scheduler.last_epoch")
    assert last_epoch == step, (step, last_epoch)  # one scheduler step per optimizer step, 2 micro-batches each
    assert lr == pytest.approx(0.01 * DECAY ** (step - set_at), rel=1e-9), (step, set_at, lr)

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command)" in out, out

    # Read back from the event file: one point per optimizer step, on the schedule before the set and after it.
    assert len(event_files(run)) == 1, list(run.iterdir())
    series = scalars(run)
    points = series["bidviz/lr_now"]
    steps = [s for s, _, _ in points]
    assert steps == sorted(set(steps)), steps  # never twice at a step: micro-batches are not steps
    before = [(s, v) for s, _, v in points if s < set_at]
    after = [(s, v) for s, _, v in points if s >= set_at]
    assert before and len(after) >= 10, points
    for s, v in before:
        assert v == pytest.approx(0.05 * DECAY**s, rel=1e-6), (s, v)  # float32 in the event file
    for s, v in after:
        assert v == pytest.approx(0.01 * DECAY ** (s - set_at), rel=1e-6), (s, v, set_at)
    assert series["hparams/lr"][-1][2] == pytest.approx(0.01)
    assert series.get("train/loss"), sorted(series)

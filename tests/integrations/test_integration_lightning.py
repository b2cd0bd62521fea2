"""PyTorch Lightning: examples/lightning_digits.py trains in a subprocess with BIDVizCallback; the CLI drives it."""

from __future__ import annotations

import importlib.util
import math

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

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("lightning"), reason="lightning is not installed")

DECAY = 0.999  # the example's LambdaLR: lr = base_lr * DECAY**step


def test_lightning_callback_end_to_end(start_training) -> None:  # type: ignore[no-untyped-def]
    training = start_training("lightning_digits.py", "lit", "--steps", "0", "--delay", "0.02", "--quiet")
    run = training.run_dir
    training.wait_live()

    # Evaluate framework objects.
    assert eval_value(run, "type(trainer).__name__, type(pl_module).__name__") == ("Trainer", "DigitsNet")
    assert eval_value(run, "sorted(bridge.hparams)") == ["dampening", "dropout", "lr", "momentum", "weight_decay"]

    # lr survives the closed-form LambdaLR: after its next steps, lr is the set value decayed from there.
    response = set_hparam(run, "lr", 0.5)
    training.wait_steps(5)
    step, lr, sched_lr = eval_value(
        run, "trainer.global_step, optimizer.param_groups[0]['lr'], scheduler.get_last_lr()[0]"
    )
    assert step >= response["step"] + 5
    assert lr == sched_lr
    assert lr == pytest.approx(0.5 * DECAY ** (step - response["step"]), rel=1e-2), (step, response["step"], lr)
    assert lr > 0.4  # without the rescale LambdaLR would have gone back to about 0.05

    # A registered hparam with on_change reaches the module.
    set_hparam(run, "dropout", 0.3)
    assert eval_value(run, "pl_module.net[2].p") == 0.3

    # Metrics that see the framework's objects.
    add_metric(run, "w_norm", "pl_module.net[0].weight.norm()")
    add_metric(run, "loss_x100", "outputs['loss'] * 100")
    add_metric(run, "batch_size", "len(batch[0])")
    wait_metric_values(training, "loss_x100")
    wait_metric_values(training, "batch_size")

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command); trainer status: finished" in out, out

    # One event file: bridge series and Lightning's own, written through the TensorBoardLogger's writer.
    assert len(event_files(run)) == 1, list(run.iterdir())
    series = scalars(run)
    for tag in ("bidviz/w_norm", "bidviz/loss_x100", "bidviz/batch_size", "hparams/lr", "hparams/dropout"):
        assert series.get(tag), f"{tag} missing; tags: {sorted(series)}"
    assert series.get("train_loss"), sorted(series)  # Lightning's self.log(...)
    assert {v for _, _, v in series["bidviz/batch_size"]} <= {64.0, 1500.0 % 64}
    assert [v for _, _, v in series["hparams/lr"]][-1] == pytest.approx(0.5)
    assert all(math.isfinite(v) and v > 0 for _, _, v in series["bidviz/w_norm"])


def test_lightning_accumulation_steps_once_per_optimizer_step(start_training) -> None:  # type: ignore[no-untyped-def]
    """accumulate_grad_batches=4: one metric run per optimizer step (at the batch that ends it), `every` counts
    optimizer steps, and commands apply between optimizer steps, never between the micro-batches of one."""
    training = start_training("lightning_digits.py", "acc", "--steps", "0", "--accumulate", "4", "--delay", "0.005")
    run = training.run_dir
    training.wait_live()
    add_metric(run, "batch_idx", "batch_idx", every=2)
    add_metric(run, "calls", "state['n'] = state.get('n', 0) + 1\nreturn state['n']")
    # 1500 samples in batches of 64: 24 batches an epoch, 6 optimizer steps; each ends at batch 3, 7, ..., 23.
    for _ in range(3):
        step, batch_idx = eval_value(run, "trainer.global_step, batch_idx")
        assert batch_idx % 4 == 3, (step, batch_idx)
    training.wait_steps(12)
    stop(training)

    series = scalars(run)
    points = series["bidviz/batch_idx"]
    steps = [s for s, _, _ in points]
    assert len(steps) >= 6 and len(set(steps)) == len(steps), steps  # one point per optimizer step
    assert all(s % 2 == 0 for s in steps), steps  # every=2 counts optimizer steps
    assert all(v % 4 == 3 for _, _, v in points), points  # taken at the batch that ended the optimizer step
    calls = series["bidviz/calls"]
    assert [s for s, _, _ in calls] == list(range(calls[0][0], calls[0][0] + len(calls)))
    assert [v for _, _, v in calls] == [float(i + 1) for i in range(len(calls))]  # ran once per optimizer step

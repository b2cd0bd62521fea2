"""Hugging Face Trainer: examples/hf_trainer_tiny.py (a GPT-2 from a config, random weights, synthetic data) trains
in a subprocess with BIDVizCallback; the CLI drives it. Nothing is downloaded (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import importlib.util

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

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("transformers") and importlib.util.find_spec("accelerate")),
    reason="transformers and accelerate are not installed",
)

MAX_STEPS = 100_000  # the example's max_steps with --steps 0; its linear schedule decays over these


def test_hf_trainer_callback_end_to_end(start_training) -> None:  # type: ignore[no-untyped-def]
    training = start_training("hf_trainer_tiny.py", "hf", "--steps", "0", "--delay", "0.02", "--quiet")
    run = training.run_dir
    training.wait_live()

    assert eval_value(run, "type(model).__name__, model.config.n_layer, type(state).__name__") == (
        "GPT2LMHeadModel",
        2,
        "TrainerState",
    )
    assert {"lr", "betas", "eps", "weight_decay"} <= set(eval_value(run, "list(bridge.hparams)"))

    # A set lr survives the linear schedule (a LambdaLR, recomputed from base_lrs): rescaled, not reset.
    response = set_hparam(run, "lr", 0.01)
    training.wait_steps(5)
    step, lr, sched_lr = eval_value(
        run, "state.global_step, optimizer.param_groups[0]['lr'], scheduler.get_last_lr()[0]"
    )
    assert step >= response["step"] + 5
    s0 = response["step"]
    expected = 0.01 * (MAX_STEPS - step) / (MAX_STEPS - s0)
    assert lr == pytest.approx(expected, rel=1e-6), (s0, step, lr)
    assert sched_lr == pytest.approx(lr)

    add_metric(run, "wte_norm", "model.transformer.wte.weight.norm()")
    add_metric(run, "epoch_x1000", "trainer_state.epoch * 1000")
    add_metric(run, "logged_loss", "logs.get('loss')")
    wait_metric_values(training, "wte_norm")
    wait_metric_values(training, "epoch_x1000")
    wait_metric_values(training, "logged_loss", timeout=60)

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command)" in out, out

    # One event file, written through the Trainer's TensorBoard writer: its series and ours.
    assert len(event_files(run)) == 1, list(run.iterdir())
    series = scalars(run)
    for tag in ("bidviz/wte_norm", "bidviz/epoch_x1000", "bidviz/logged_loss", "hparams/lr", "train/loss"):
        assert series.get(tag), f"{tag} missing; tags: {sorted(series)}"
    assert series.get("train/train_runtime"), sorted(series)  # logged by the Trainer's own end of training
    assert series["hparams/lr"][-1][2] == pytest.approx(0.01)
    # The Trainer's own learning_rate series, logged after the change, shows the set value (decayed from there).
    after = [v for s, _, v in series["train/learning_rate"] if s > s0]
    assert after and all(0.009 < v <= 0.01 for v in after), series["train/learning_rate"]

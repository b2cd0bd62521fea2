"""examples/jax_logging.py: JAX/optax training logged with EventWriter, read back by TensorBoard and by us."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bidviz.writers import read_scalars

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "jax_logging.py"


def test_jax_example_writes_a_run_tensorboard_reads(tmp_path: Path) -> None:
    pytest.importorskip("jax", reason="the example needs jax")
    pytest.importorskip("optax", reason="the example needs optax")
    command = [sys.executable, str(EXAMPLE), "--logdir", str(tmp_path), "--run", "jax", "--steps", "120"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "jax"
    assert f"run: {run}" in out.stdout and f"tensorboard --logdir {tmp_path}" in out.stdout
    series = read_scalars(run)
    assert [step for step, _, _ in series["train/loss"]] == list(range(120))
    assert series["train/loss"][-1][2] < series["train/loss"][0][2]  # it learns
    assert [step for step, _, _ in series["eval/loss"]] == [0, 50, 100, 119]
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    assert [e.value for e in accumulator.Scalars("train/loss")] == [value for _, _, value in series["train/loss"]]
    assert len(accumulator.Histograms("params/layer0/weights")) == 4
    assert "_hparams_/session_start_info" in accumulator.PluginTagToContent("hparams")

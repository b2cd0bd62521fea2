"""A run written by TensorFlow's own `tf.summary` (scalars, histograms, images, text), and a JAX run written by Flax's
`flax.metrics.tensorboard.SummaryWriter` (examples/jax_logging.py --writer flax), served by the stock `tensorboard`
with TensorFlow loaded: the BIDViz tab lists them and downloads their series, `bidviz export` exports them, and our
reader gives what TensorBoard's loader gives."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tab_support import wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from bidviz.writers import read_scalars

P = "/data/plugin/bidviz"
JAX_LOGGING = Path(__file__).resolve().parents[2] / "examples" / "jax_logging.py"
FLAX_STEPS = 20


def _tf_summary_run(run_dir: Path) -> None:
    import tensorflow as tf  # a test extra

    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        for step in range(5):
            tf.summary.scalar("train/loss", 1.0 / (step + 1), step=step)
            tf.summary.scalar("train/count", tf.constant(step, dtype=tf.int64), step=step)
            tf.summary.histogram("weights", tf.linspace(0.0, float(step), 16), step=step)
            tf.summary.image("digits", tf.fill([1, 8, 8, 1], step / 5.0), step=step)
            tf.summary.text("notes", f"step {step}", step=step)
    writer.close()


def _flax_run(logdir: Path) -> None:
    """A JAX/optax run logged through Flax's SummaryWriter, in its own process as a user would run it."""
    command = [sys.executable, str(JAX_LOGGING), "--logdir", str(logdir), "--run", "flax", "--writer", "flax"]
    out = subprocess.run([*command, "--steps", str(FLAX_STEPS)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]


def _check_run(tb: Any, logdir: Path, run: str, tensor_tags: set[str]) -> dict[str, list[tuple[int, float, float]]]:
    """The run listed by the tab; our reader equal to TensorBoard's loader, point for point; each series downloaded
    through the tab's data route as we read it. Returns our series."""
    body = wait_for(lambda: [r for r in tb.get(f"{P}/runs")[1]["runs"] if r["run"] == run], f"run {run} listed", 60)
    assert body[0]["live"] == "none" and not body[0]["controllable"]
    ours = read_scalars(logdir / run)
    wait_for(lambda: set(ours) <= set(tb.get(f"{P}/tags?run={run}")[1].get("tags", [])), f"{run} tags", 30)
    accumulator = EventAccumulator(str(logdir / run), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert tensor_tags <= set(accumulator.Tags()["tensors"]), accumulator.Tags()
    for tag, points in ours.items():
        theirs = [
            (e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)
        ]
        np.testing.assert_array_equal(np.array(points), np.array(theirs), err_msg=tag)
        status, data = tb.get(f"{P}/data?run={run}&tag={tag}&format=json")
        assert status == 200, data
        assert [(p["step"], p["value"]) for p in data["points"]] == [(s, v) for s, _, v in points], tag
    return ours


def _export(run_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bidviz", "export", str(run_dir), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_tf_summary_and_flax_runs_listed_downloaded_and_exported(tmp_path: Path, start_tensorboard: Any) -> None:
    logdir = tmp_path / "logs"
    _tf_summary_run(logdir / "tf")
    flax = importlib.util.find_spec("flax") is not None  # a test extra; kept optional for a partial install
    if flax:
        _flax_run(logdir)
    tb = start_tensorboard(logdir, tensorflow=True)

    ours = _check_run(tb, logdir, "tf", {"weights", "digits", "notes"})
    assert sorted(ours) == ["train/count", "train/loss"]  # histograms, images and text are no scalar series
    exported = _export(logdir / "tf")
    assert exported["train/loss"] and [p["value"] for p in exported["train/loss"]] == pytest.approx(
        [1.0 / (s + 1) for s in range(5)]
    )
    assert [p["value"] for p in exported["train/count"]] == [0.0, 1.0, 2.0, 3.0, 4.0]

    if not flax:
        pytest.skip("flax is not installed: the tf.summary run passed, the Flax run was not written")
    ours = _check_run(tb, logdir, "flax", {"params/layer0/weights", "summary", "_hparams_/session_start_info"})
    assert sorted(ours) == ["eval/loss", "hparams/lr", "params/global_norm", "train/grad_norm", "train/loss"]
    assert [s for s, _, _ in ours["train/loss"]] == list(range(FLAX_STEPS))
    assert [s for s, _, _ in ours["eval/loss"]] == [0, FLAX_STEPS - 1]
    exported = _export(logdir / "flax")
    assert set(exported) == set(ours)
    for tag, points in ours.items():
        assert [(p["step"], p["value"]) for p in exported[tag]] == [(s, v) for s, _, v in points], tag

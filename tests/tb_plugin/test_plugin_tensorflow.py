"""A run written by TensorFlow's own `tf.summary` (scalars, histograms, images, text), served by the stock
`tensorboard` with TensorFlow loaded: the BIDViz tab lists it and downloads its series, `bidviz export` exports them,
and our reader gives what TensorBoard's loader gives."""

from __future__ import annotations

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


def test_tf_summary_run_listed_downloaded_and_exported(tmp_path: Path, start_tensorboard: Any) -> None:
    logdir = tmp_path / "logs"
    _tf_summary_run(logdir / "tf")
    tb = start_tensorboard(logdir, tensorflow=True)

    body = wait_for(lambda: [r for r in tb.get(f"{P}/runs")[1]["runs"] if r["run"] == "tf"], "run tf listed", 60)
    assert body[0]["live"] == "none" and not body[0]["controllable"]
    wait_for(lambda: "train/loss" in tb.get(f"{P}/tags?run=tf")[1].get("tags", []), "tf tags", 30)

    ours = read_scalars(logdir / "tf")
    assert sorted(ours) == ["train/count", "train/loss"]  # histograms, images and text are no scalar series
    accumulator = EventAccumulator(str(logdir / "tf"), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert {"weights", "digits", "notes"} <= set(accumulator.Tags()["tensors"])
    for tag, points in ours.items():
        theirs = [
            (e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)
        ]
        np.testing.assert_array_equal(np.array(points), np.array(theirs), err_msg=tag)
        status, data = tb.get(f"{P}/data?run=tf&tag={tag}&format=json")
        assert status == 200, data
        assert [(p["step"], p["value"]) for p in data["points"]] == [(s, v) for s, _, v in points], tag

    out = subprocess.run(
        [sys.executable, "-m", "bidviz", "export", str(logdir / "tf"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert exported["train/loss"] and [p["value"] for p in exported["train/loss"]] == pytest.approx(
        [1.0 / (s + 1) for s in range(5)]
    )
    assert [p["value"] for p in exported["train/count"]] == [0.0, 1.0, 2.0, 3.0, 4.0]

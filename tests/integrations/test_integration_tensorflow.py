"""A plain TensorFlow custom loop (examples/tf_custom_loop.py: tf.GradientTape, a tf.keras optimizer, a tf.function
step) steered through `bind_hparam`, with the bridge writing through the loop's own `tf.summary` writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from integration_checks import (
    add_metric,
    cli_ok,
    eval_value,
    event_files,
    pause_resume,
    scalars,
    set_hparam,
    stop,
    wait_metric_values,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytest.importorskip("tensorflow", reason="TensorFlow is a test extra")  # present in CI; kept for a partial install


def test_tf_custom_loop_steered_through_its_own_tf_summary_writer(start_training) -> None:  # type: ignore[no-untyped-def]
    training = start_training("tf_custom_loop.py", "tf", "--steps", "0", "--delay", "0.01", "--quiet")
    run = training.run_dir
    training.wait_live()
    assert eval_value(run, "sorted(bridge.hparams), keras.backend.backend()") == (["l2", "lr"], "tensorflow")

    response = set_hparam(run, "lr", 0.01)
    set_hparam(run, "l2", 0.001)
    lr, l2, iterations = eval_value(run, "float(optimizer.learning_rate), float(l2), int(optimizer.iterations)")
    assert lr == pytest.approx(0.01) and l2 == pytest.approx(0.001) and iterations >= response["step"]

    # Metric values that are TF tensors: a 0-d one is a scalar, a 1-d one a histogram.
    add_metric(run, "kernel_norm", "tf.norm(model.layers[0].kernel)")
    add_metric(run, "loss_x100", "loss * 100")
    add_metric(run, "bias", "model.layers[1].bias")
    for name in ("kernel_norm", "loss_x100", "bias"):
        wait_metric_values(training, name)
    pause_resume(training)
    out = stop(training)
    assert "(stopped by command)" in out, out

    # One event file, the loop's own tf.summary file: its series and the bridge's, read by our reader exactly as
    # TensorBoard's own loader reads them.
    (path,) = event_files(run)
    assert path.name.endswith(".v2"), path.name  # written by tf.summary, not by us
    series = scalars(run)
    for tag in ("train/loss", "bidviz/kernel_norm", "bidviz/loss_x100", "hparams/lr", "hparams/l2"):
        assert series.get(tag), f"{tag} missing; tags: {sorted(series)}"
    assert series["hparams/lr"][-1][2] == pytest.approx(0.01)
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert set(tags["scalars"]) <= set(series) <= set(tags["scalars"]) | set(tags["tensors"]), (series, tags)
    for tag, points in series.items():
        if tag in tags["scalars"]:
            theirs = [(e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag)]
        else:  # TF2 writes scalars as tensors
            theirs = [(e.step, e.wall_time, float(np.asarray(_tensor(e)))) for e in accumulator.Tensors(tag)]
        np.testing.assert_allclose(np.array(points), np.array(theirs), rtol=1e-6, err_msg=tag)
    assert "bidviz/bias" in tags["histograms"]

    exported = json.loads(cli_ok("export", run, "--tag", "bidviz/*", "--format", "json"))
    assert set(exported) >= {"bidviz/kernel_norm", "bidviz/loss_x100"}
    assert [p["value"] for p in exported["bidviz/kernel_norm"]] == pytest.approx(
        [v for _, _, v in series["bidviz/kernel_norm"]]
    )


def _tensor(event):  # type: ignore[no-untyped-def]
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)

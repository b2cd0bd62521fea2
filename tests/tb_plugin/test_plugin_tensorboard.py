"""The stock `tensorboard` command, as a subprocess on 127.0.0.1, with each data loader, over a log directory with a
live training process: the BIDViz tab is listed, a command sent over HTTP reaches training, and the bridge's series
show up in TensorBoard's own SCALARS data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tab_support import wait_for

P = "/data/plugin/bidviz"


@pytest.mark.parametrize("loader", [[], ["--load_fast=false"], ["--load_fast=true"]], ids=["default", "python", "rust"])
def test_a_command_over_http_reaches_training(
    tmp_path: Path, start_training: Any, start_tensorboard: Any, loader: list[str]
) -> None:
    logdir = tmp_path / "logs"
    training = start_training(logdir / "exp")
    tb = start_tensorboard(logdir, *loader)

    status, listing = tb.get("/data/plugins_listing")
    assert status == 200 and listing["bidviz"]["enabled"] and listing["bidviz"]["tab_name"] == "BIDViz"

    def listed() -> Any:
        status, body = tb.get(f"{P}/runs")
        assert status == 200, body
        return [r for r in body["runs"] if r["run"] == "exp" and r["live"] == "live"]

    wait_for(listed, "run exp listed as live", 60)

    status, body = tb.get(f"{P}/csrf")
    token = body["token"]
    status, body = tb.post(
        f"{P}/command",
        {"run": "exp", "kind": "set_hparam", "args": {"name": "lr", "value": 0.0125}},
        {"X-BIDViz-CSRF": token},
    )
    assert status == 200, body
    command_id = body["id"]
    resp = wait_for(lambda: (r := tb.get(f"{P}/response?run=exp&id={command_id}"))[0] == 200 and r[1], "a response")
    assert resp["status"] == "applied" and resp["result"]["value"] == 0.0125

    status, body = tb.post(
        f"{P}/command",
        {"run": "exp", "kind": "eval", "args": {"code": "optimizer.param_groups[0]['lr']"}},
        {"X-BIDViz-CSRF": token},
    )
    command_id = body["id"]
    resp = wait_for(lambda: (r := tb.get(f"{P}/response?run=exp&id={command_id}"))[0] == 200 and r[1], "eval")
    assert resp["result"] == 0.0125  # the training process's own optimizer says so

    status, body = tb.post(
        f"{P}/command",
        {"run": "exp", "kind": "add_metric", "args": {"name": "bias", "code": "model.bias.item()"}},
        {"X-BIDViz-CSRF": token},
    )
    assert status == 200

    def in_scalars_dashboard() -> Any:
        status, tags = tb.get("/data/plugin/scalars/tags")
        return status == 200 and {"bidviz/bias", "hparams/lr"} <= set(tags.get("exp", {}))

    wait_for(in_scalars_dashboard, "bidviz/bias and hparams/lr in TensorBoard's scalars", 60)

    # Hostile requests against the real server: a rebound Host and a missing token get nowhere.
    status, body = tb.get(f"{P}/csrf", {"Host": "rebound.example"})
    assert status == 403 and "not allowed" in body["error"]
    status, body = tb.post(f"{P}/command", {"run": "exp", "kind": "stop", "args": {}})
    assert status == 403 and "X-BIDViz-CSRF" in body["error"]
    assert training.proc.poll() is None  # still training


def test_logdir_spec_is_listed_read_only_with_a_reason(
    tmp_path: Path, start_training: Any, start_tensorboard: Any
) -> None:
    logdir = tmp_path / "logs"
    start_training(logdir / "exp")
    tb = start_tensorboard(None, "--logdir_spec", f"mine:{logdir}")

    def listed() -> Any:
        status, body = tb.get(f"{P}/runs")
        assert status == 200, body
        return body["runs"] and body

    body = wait_for(listed, "runs under --logdir_spec", 60)
    assert "--logdir_spec" in body["problem"] and "--logdir DIR" in body["problem"]
    assert [r["controllable"] for r in body["runs"]] == [False]
    token = tb.get(f"{P}/csrf")[1]["token"]
    run = body["runs"][0]["run"]
    status, err = tb.post(f"{P}/command", {"run": run, "kind": "stop", "args": {}}, {"X-BIDViz-CSRF": token})
    assert status == 409 and "--logdir_spec" in err["error"]


def _tf2_run(run_dir: Path) -> None:
    """Scalars exactly as TF2's `tf.summary.scalar` (and flax) write them: tensor values, metadata only first."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(run_dir))
    for step in range(4):
        summary = scalar_pb("eval/accuracy", 0.5 + step / 10)
        if step:
            summary.value[0].ClearField("metadata")
        writer.add_event(event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary))
    writer.close()


@pytest.mark.parametrize("loader", [["--load_fast=false"], ["--load_fast=true"]], ids=["python", "rust"])
def test_runs_of_every_writer_are_listed_and_downloadable(
    tmp_path: Path, start_tensorboard: Any, loader: list[str]
) -> None:
    import torch.utils.tensorboard
    from tensorboardX import SummaryWriter

    from bidviz.writers import EventWriter

    logdir = tmp_path / "logs"
    _tf2_run(logdir / "tf2")
    with SummaryWriter(str(logdir / "tbx")) as w:
        w.add_scalar("loss", 0.25, 7)
    with torch.utils.tensorboard.SummaryWriter(str(logdir / "torch")) as w:
        w.add_scalar("loss", 0.5, 3, new_style=True)
    with EventWriter(logdir / "jax") as w:  # what examples/jax_logging.py writes with
        w.add_scalar("train/loss", 0.125, 11)
    tb = start_tensorboard(logdir, *loader)

    def all_listed() -> Any:
        body = tb.get(f"{P}/runs")[1]
        return {r["run"] for r in body["runs"]} == {"tf2", "tbx", "torch", "jax"} and body

    body = wait_for(all_listed, "the four runs", 60)
    assert all(r["live"] == "none" and not r["controllable"] for r in body["runs"])
    expected = {
        "tf2": ("eval/accuracy", [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]),
        "tbx": ("loss", [(7, 0.25)]),
        "torch": ("loss", [(3, 0.5)]),
        "jax": ("train/loss", [(11, 0.125)]),
    }
    for run, (tag, points) in expected.items():
        wait_for(lambda run=run, tag=tag: tag in tb.get(f"{P}/tags?run={run}")[1].get("tags", []), f"{run} tags", 30)
        status, data = tb.get(f"{P}/data?run={run}&tag={tag}&format=json")
        assert status == 200, data
        assert [p["step"] for p in data["points"]] == [s for s, _ in points], run
        assert [p["value"] for p in data["points"]] == pytest.approx([v for _, v in points], rel=1e-6), run

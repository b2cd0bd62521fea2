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

"""The stock `tensorboard --logdir s3://...` against the emulated S3 (moto's server on loopback), with a training
process whose Bridge runs on the same store: TensorBoard lists the run and reads the bridge's series from the event
object, and the BIDViz tab's HTTP routes steer the run.

Which TensorBoard reads S3 (found here, TensorBoard 2.21): its Python loader on its own TensorFlow stub, which reads
`s3://` through boto3 (`S3_ENDPOINT`, or `AWS_ENDPOINT_URL`, for another S3 API). With TensorFlow installed,
TensorBoard reads through `tf.io.gfile`, which has no `s3` since TF 2.6 (it moved to tensorflow-io), and it stops at
start saying so; the Rust data server (`--load_fast=true`) knows local paths and `gs://` only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from remote_support import Process, request, tensorboard, wait_for

HERE = Path(__file__).resolve().parent
BUCKET = "bidviz-test"  # made by the s3 fixture
P = "/data/plugin/bidviz"


def test_tensorboard_lists_an_s3_run_shows_its_series_and_the_tab_steers_it(start: Callable[..., Process]) -> None:
    logdir = f"s3://{BUCKET}/tb-{uuid.uuid4().hex[:8]}"
    trainer = start(str(HERE / "remote_trainer.py"), f"{logdir}/exp")
    trainer.wait_output("READY")
    tb = tensorboard(start, logdir, "--reload_interval", "1")
    url = tb.wait_output(r"TensorBoard \S+ at (http://\S+:\d+)/").group(1)
    wait_for(lambda: request(url + "/data/runs") == (200, ["exp"]), "TensorBoard to list the run exp", 60)

    status, body = request(f"{url}{P}/runs")
    assert status == 200 and body["problem"] is None, body
    assert [(r["run"], r["live"], r["controllable"]) for r in body["runs"]] == [("exp", "live", True)], body

    token = request(f"{url}{P}/csrf")[1]["token"]

    def send(kind: str, args: dict[str, Any]) -> dict[str, Any]:
        status, sent = request(
            f"{url}{P}/command", {"run": "exp", "kind": kind, "args": args}, {"X-BIDViz-CSRF": token}
        )
        assert status == 200, sent

        def answered() -> Any:
            status, resp = request(f"{url}{P}/response?run=exp&id={sent['id']}")
            return resp if status == 200 else None

        return wait_for(answered, f"the response to {kind}", 30)  # type: ignore[no-any-return]

    assert send("set_hparam", {"name": "lr", "value": 0.0125})["status"] == "applied"
    added = send("add_metric", {"name": "inv", "code": "1 / (step + 1)"})
    assert added["status"] == "applied" and 0 < added["result"]["first_value"] <= 1, added
    assert send("eval", {"code": "hparams['lr'] * 2"})["result"] == 0.025

    # TensorBoard's own scalars route reads both series from the event object on the store.
    def lr_points() -> Any:
        status, tags = request(f"{url}/data/plugin/scalars/tags")
        if status != 200 or not {"hparams/lr", "bidviz/inv"} <= set(tags.get("exp", {})):
            return None
        status, points = request(f"{url}/data/plugin/scalars/scalars?run=exp&tag=hparams/lr")
        return points if status == 200 and points[-1][2] == pytest.approx(0.0125) else None

    points = wait_for(lr_points, "hparams/lr = 0.0125 and bidviz/inv in TensorBoard's scalars", 60)
    assert points[0][2] == pytest.approx(0.1)  # the starting value, then the change
    status, inv = request(f"{url}/data/plugin/scalars/scalars?run=exp&tag=bidviz/inv")
    assert status == 200 and all(v == pytest.approx(1 / (s + 1)) for _, s, v in inv), inv[:3]

    status, data = request(f"{url}{P}/data?run=exp&tag=hparams/lr&format=json")  # the tab's download
    assert status == 200 and [p["value"] for p in data["points"]] == pytest.approx([0.1, 0.0125]), data

    status, journal = request(f"{url}{P}/journal?run=exp")
    kinds = [e["kind"] for e in journal["entries"] if e.get("event") == "command"]
    assert kinds == ["set_hparam", "add_metric", "eval"], journal
    version = journal["version"]  # while nothing is appended, one LIST answers the tab's poll
    assert request(f"{url}{P}/journal?run=exp&since={version}")[1] == {
        "run": "exp",
        "version": version,
        "unchanged": True,
    }
    status, last = request(f"{url}{P}/journal?run=exp&limit=1")
    assert [e["kind"] for e in last["entries"]] == ["eval"], last

    # Hostile requests: a run outside the log directory, a run TensorBoard does not list, no CSRF token.
    status, err = request(f"{url}{P}/state?run=../exp")
    assert status == 400, err
    status, err = request(f"{url}{P}/state?run=nope")
    assert status == 404 and "exp" in err["error"], err
    status, err = request(f"{url}{P}/command", {"run": "exp", "kind": "stop", "args": {}})
    assert status == 403, err
    assert trainer.proc.poll() is None

    assert send("stop", {})["status"] == "applied"
    assert trainer.proc.wait(60) == 0
    status, after = request(f"{url}{P}/journal?run=exp&since={version}")
    assert status == 200 and after["version"] != version, after
    assert [e["kind"] for e in after["entries"] if e.get("event") == "command"][-1] == "stop", after
    wait_for(lambda: request(f"{url}{P}/runs")[1]["runs"][0]["live"] == "ended", "the run shown as ended", 30)


def test_tensorboard_data_server_refuses_s3(start: Callable[..., Process]) -> None:
    """`--load_fast=true` (the Rust data server only) cannot read s3://: TensorBoard says so and exits; the default
    (`auto`) falls back to the Python loader by itself, as the test above shows."""
    tb = tensorboard(start, f"s3://{BUCKET}/none", "--load_fast", "true")
    assert tb.proc.wait(60) != 0
    assert 'unknown protocol "s3"' in tb.output(), tb.output()

"""`bidviz.connect` against a real training process: watch() yields a metric's values in order while training runs;
errors raise typed exceptions with the training side's traceback; series, state, rules, HTML; and a notebook run
headless (nbclient, a real kernel) that connects, sets lr and reads values."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bidviz
from bidviz.client import CommandFailed, CommandRejected, NoResponse, Run
from bidviz.errors import ChannelError

TRAINER = Path(__file__).parents[1] / "bridge" / "safety_trainer.py"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), str(tmp_path / "run"), "--delay", "0.01"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        client = bidviz.connect(tmp_path / "run", wait=30)
        deadline = time.monotonic() + 30
        while client.state.get("step") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield client
        client.stop()
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_watch_yields_a_metrics_values_in_order_while_training_runs(run: Run) -> None:
    run.add_metric("double", "step * 2")
    seen = []
    started = run.state["step"]
    for tag, step, value in run.watch(["bidviz/dou*", "nothing/*"], timeout=20):
        assert tag == "bidviz/double"
        seen.append((step, value))
        if len(seen) == 40:
            break
    assert len(seen) == 40 and seen[0][0] >= started
    assert [s for s, _ in seen] == sorted({s for s, _ in seen})  # in order, each once
    assert all(v == 2 * s for s, v in seen)
    assert run.state["step"] > seen[0][0]  # it was running all along
    assert list(run.watch("bidviz/double", timeout=0)) == []  # a timeout of 0 ends at once


def test_errors_are_typed_and_carry_the_training_traceback(run: Run, tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as failed:
        run.eval("def f(x):\n    return 1 / x\nf(0)")
    assert failed.value.error_type == "ZeroDivisionError" and failed.value.status == "failed"
    assert 'File "<eval>", line 2, in f' in failed.value.traceback and "--- traceback in training ---" in str(
        failed.value
    )
    with pytest.raises(CommandRejected, match="no hyperparameter 'nope'") as rejected:
        run.set(nope=1)
    assert rejected.value.error_type == "UnknownName"
    with pytest.raises(CommandRejected, match="SyntaxError"):
        run.rules.add("bad", "set(lr=")
    assert run.eval("[g['lr'] for g in optimizer.param_groups]") == [0.05]
    assert run.eval("model").startswith("Sequential(")  # not JSON: its repr
    assert run.set(lr=0.01, momentum=0.5) == {
        "lr": {"name": "lr", "value": 0.01, "old": 0.05},
        "momentum": {"name": "momentum", "value": 0.5, "old": 0.9},
    }
    with pytest.raises(TypeError, match="name=value"):
        run.set()
    with pytest.raises(ChannelError, match="no BIDViz mailbox"):
        bidviz.connect(tmp_path / "elsewhere")


def test_series_state_rules_and_html(run: Run) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            points = run.series("train/loss")
        except KeyError:
            points = []
        if len(points) >= 5:
            break
        time.sleep(0.2)
    steps = list(points["step"])
    assert steps == sorted(steps) and len(steps) >= 5 and points["value"][-1] > 0
    with pytest.raises(KeyError, match="there are: .*train/loss"):
        run.series("no/such")
    run.rules.add("calm", "if metrics.get('x', 0) > 1: pause('x')", every=5, cooldown=10)
    assert dict(run.rules)["calm"]["every"] == 5 and len(run.rules) == 1
    run.rules.pause("calm")
    assert run.rules["calm"]["status"] == "paused"
    snap = run.snapshot("checkpoint")
    assert snap["reason"] == "checkpoint" and snap["targets"] == ["model", "optimizer"]
    page = run._repr_html_()
    for part in ("<table", "hyperparameters", "lr", "calm", "snapshots", "checkpoint"):
        assert part in page, part
    run.rules.remove("calm")
    assert len(run.rules) == 0
    run.pause("for a look")
    assert run.state["paused"] is True
    run.resume()


def test_no_response_in_time_is_typed(run: Run) -> None:
    impatient = bidviz.connect(run.run_dir, wait=0.3)
    with pytest.raises(NoResponse, match="is live.*it may still be applied"):
        impatient.eval("import time\ntime.sleep(3)")  # taken by the bridge at once, answered after the wait
    assert impatient.last is None


def test_a_notebook_steers_a_run(run: Run, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"import bidviz\nrun = bidviz.connect({str(run.run_dir)!r})\nrun"),
        nbformat.v4.new_code_cell("run.set(lr=0.02)"),
        nbformat.v4.new_code_cell("values = [v for _, _, v in run.watch('train/loss', timeout=3)]\nlen(values) > 10"),
        nbformat.v4.new_code_cell("run.eval(\"optimizer.param_groups[0]['lr']\")"),
        nbformat.v4.new_code_cell("run.state"),
    ]
    nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    out = [cell.outputs[0]["data"] for cell in nb.cells]
    assert "<table" in out[0]["text/html"] and "BIDViz run" in out[0]["text/html"]
    assert out[1]["text/plain"] == "{'name': 'lr', 'value': 0.02, 'old': 0.05}"
    assert out[2]["text/plain"] == "True"
    assert out[3]["text/plain"] == "0.02"
    assert "hyperparameters" in out[4]["text/html"]

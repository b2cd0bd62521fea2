"""Pause, resume, stop and the terminal, against a real training process."""

from __future__ import annotations

import time

import pytest
from bridge_helpers import journal_commands


def test_pause_blocks_steps_but_serves_commands_then_resume(start_trainer):
    t = start_trainer()
    assert t.call("pause")["status"] == "applied"
    state = t.wait_for(lambda s: s["paused"], what="paused")
    frozen = state["step"]
    time.sleep(0.5)
    assert t.state()["step"] == frozen, "no step while paused"
    now = t.call("eval", code="step", now=True)
    assert now["status"] == "applied" and now["result"] == frozen
    at_boundary = t.call("eval", code="model[0].weight.data.zero_()\nfloat(model[0].weight.abs().sum())")
    assert at_boundary["status"] == "applied" and at_boundary["result"] == 0.0, "evals are served while paused"
    assert t.call("set_hparam", name="lr", value=0.05)["status"] == "applied"
    assert t.call("resume")["status"] == "applied"
    t.wait_for(lambda s: not s["paused"] and s["step"] > frozen + 3, what="training resumed")
    assert t.call("eval", code="optimizer.param_groups[0]['lr']")["result"] == 0.05


def test_stop_ends_the_loop_cleanly_and_marks_the_run_ended(start_trainer):
    t = start_trainer()
    resp = t.call("stop")
    assert resp["status"] == "applied"
    code, out, err = t.wait()
    assert code == 0, err
    assert "DONE" in out
    state = t.mailbox.read_state()
    assert state["closed"] is True and state["stopping"] is True
    assert t.mailbox.liveness() == "ended"


def test_stop_while_paused_ends_the_loop(start_trainer):
    t = start_trainer()
    t.call("pause")
    t.call("stop")
    assert t.wait()[0] == 0


def test_eval_results_reprs_and_tracebacks(start_trainer):
    t = start_trainer()
    r = t.call("eval", code="[g['lr'] for g in optimizer.param_groups]")
    assert r["result"] == [0.1] and r["repr"] == "[0.1]"
    r = t.call("eval", code="model[0]")
    assert r["result"] is None and r["repr"].startswith("Linear(in_features=4")
    r = t.call("eval", code="x = 3\ny = x * 2")
    assert r["status"] == "applied" and r["result"] is None and r["repr"] == "None"
    assert t.call("eval", code="x + y")["result"] == 9, "the terminal keeps its names"
    r = t.call("eval", code="a = 1\nb = 0\na / b")
    assert r["status"] == "failed"
    err = r["error"]
    assert err["type"] == "ZeroDivisionError" and err["line"] == 3
    assert 'File "<eval>", line 3' in err["traceback"] and "ZeroDivisionError: division by zero" in err["traceback"]
    r = t.call("eval", code="exit()")
    assert r["status"] == "failed" and r["error"]["type"] == "SystemExit"
    assert t.call("eval", code="torch.tensor(2.5)")["result"] == 2.5
    assert t.call("eval", code="float('nan')")["result"] == "NaN"
    assert t.call("eval", code="1", now=True)["step"] is not None


def test_endless_eval_is_interrupted_in_the_training_thread(start_trainer):
    t = start_trainer("--budget", "1")
    r = t.call("eval", code="while True:\n    pass", timeout=30)
    assert r["status"] == "failed" and r["error"]["type"] == "MetricTimeout"
    before = t.state()["step"]
    t.wait_for(lambda s: s["step"] > before + 3, what="training goes on")


def test_polling_fallback_serves_commands(start_trainer):
    t = start_trainer("--poll", "0.2")
    assert t.call("eval", code="40 + 2")["result"] == 42


def test_state_reports_progress_and_heartbeat(start_trainer):
    t = start_trainer("--delay", "0.01")
    state = t.wait_for(lambda s: s["steps_per_sec"] and s["steps_per_sec"] > 10, what="steps/s")
    assert state["pid"] == t.proc.pid and state["v"] == 1
    assert abs(time.time() - state["heartbeat"]) < 3
    assert state["hparams"]["lr"]["value"] == 0.1 and state["hparams"]["mode"]["choices"] == ["fast", "slow"]
    assert t.mailbox.liveness(state) == "live"


def test_journal_records_who_changed_what_at_which_step(start_trainer):
    t = start_trainer()
    cid = t.send("set_hparam", name="momentum", value=0.5)
    resp = t.mailbox.wait_response(cid, 20)
    (entry,) = journal_commands(t.mailbox, cid)
    assert entry["status"] == "applied" and entry["args"] == {"name": "momentum", "value": 0.5}
    assert entry["step"] == resp["step"] and entry["sender"]
    assert resp["received_at"] <= resp["applied_at"]
    change = t.state()["hparams"]["momentum"]["changes"][-1]
    assert change == pytest.approx(
        {"step": resp["step"], "old": 0.9, "value": 0.5, "time": change["time"], "sender": entry["sender"]}
    )


def test_a_bridge_left_open_is_closed_and_flushed_at_interpreter_exit(tmp_path):
    import subprocess
    import sys

    from bridge_helpers import scalars

    from bidviz.channel import Mailbox

    script = (
        "import sys\nfrom bidviz import Bridge\nb = Bridge(sys.argv[1], flush_secs=600)\n"
        "b.add_metric('sq', 'step * step')\nfor s in range(50):\n    b.step(s)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Mailbox(tmp_path / "run").liveness() == "ended"
    assert scalars(tmp_path / "run", "bidviz/sq")[-1] == (49, 49 * 49)

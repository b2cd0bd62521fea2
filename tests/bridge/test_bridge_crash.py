"""A crash or restart never drops or double-applies a command; one live Bridge per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from bridge_helpers import journal_commands, scalars

from bidviz import BridgeBusyError, protocol
from bidviz.channel import Mailbox


def test_kill_9_while_applying_an_eval_answers_it_interrupted_and_never_runs_it_twice(start_trainer, tmp_path):
    marker = tmp_path / "marker.txt"
    code = f"open({str(marker)!r}, 'a').write('ran\\n')\ntime.sleep(float(os.environ.get('SLOW', '0')))\n'done'"
    first = start_trainer(env={"SLOW": "60"})
    cid = first.send("eval", code=code)
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "ran\n", "the eval started in the first process"
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    assert first.mailbox.read_response(cid) is None
    applying = [e for e in first.mailbox.iter_journal() if e.get("event") == "applying"]
    assert [c["id"] for e in applying for c in e["commands"]] == [cid], "journaled as applying before it ran"

    second = start_trainer(env={"SLOW": "0"})
    resp = second.mailbox.wait_response(cid, 20)
    assert resp is not None and resp["status"] == "failed", resp
    assert resp["error"]["type"] == "Interrupted" and "not run again" in resp["error"]["message"]
    time.sleep(1.0)
    assert marker.read_text() == "ran\n", "never run a second time"
    assert len(journal_commands(second.mailbox, cid)) == 1
    assert list(second.mailbox.inbox.iterdir()) == []


def test_kill_9_while_setting_a_value_reapplies_it_since_it_is_idempotent(start_trainer):
    first = start_trainer(env={"SLOW_SETTER": "60"})
    cid = first.send("set_hparam", name="slow_setter", value=5)
    first.wait_for(lambda s: s["pending"] == 0, what="the set taken")
    time.sleep(0.5)
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    assert first.mailbox.read_response(cid) is None
    second = start_trainer()
    resp = second.mailbox.wait_response(cid, 20)
    assert resp is not None and resp["status"] == "applied", resp
    assert second.call("eval", code="bridge.hparams['slow_setter']")["result"] == 5


def test_journaled_command_found_again_after_crash_is_answered_not_reapplied(start_trainer, tmp_path):
    marker = tmp_path / "marker.txt"
    first = start_trainer()
    command = protocol.make_command("eval", {"code": f"open({str(marker)!r}, 'a').write('ran\\n')"})
    cid = first.mailbox.send(command)
    assert first.mailbox.wait_response(cid, 20)["status"] == "applied"
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    # The disk as a crash between journaling and answering leaves it: journaled, no response, file still there.
    (first.mailbox.outbox / f"{cid}.json").unlink()
    (first.mailbox.inbox / protocol.inbox_name(cid, command.sent_at)).write_bytes(protocol.dumps(command.to_dict()))

    second = start_trainer()
    resp = second.mailbox.wait_response(cid, 20)
    assert resp is not None and resp["status"] == "applied"
    time.sleep(0.5)
    assert marker.read_text() == "ran\n", "not applied a second time"
    assert len(journal_commands(second.mailbox, cid)) == 1
    assert list(second.mailbox.inbox.iterdir()) == []


def test_commands_sent_while_no_bridge_runs_are_applied_once_at_start(start_trainer):
    first = start_trainer()
    first.call("stop")
    assert first.wait()[0] == 0
    ids = [first.send("set_hparam", name="momentum", value=0.5), first.send("eval", code="'hello'")]
    assert all(first.mailbox.read_response(i) is None for i in ids)
    second = start_trainer()
    responses = [second.mailbox.wait_response(i, 20) for i in ids]
    assert [r["status"] for r in responses] == ["applied", "applied"]
    assert responses[1]["repr"] == "'hello'"
    second.wait_for(lambda s: s["hparams"]["momentum"]["value"] == 0.5, what="momentum 0.5")


def test_resumed_run_keeps_tuned_hparams_and_added_metrics(start_trainer):
    first = start_trainer()
    assert first.call("set_hparam", name="lr", value=0.02)["status"] == "applied"
    assert first.call("set_hparam", name="dropout", value=0.3)["status"] == "applied"
    assert first.call("add_metric", name="twice_loss", code="loss * 2")["status"] == "applied"
    assert first.call("add_metric", name="gone", code="1")["status"] == "applied"
    assert first.call("remove_metric", name="gone")["status"] == "applied"
    first.proc.send_signal(signal.SIGKILL)
    first.kill()

    second = start_trainer()
    state = second.wait_for(lambda s: s["metrics"].get("twice_loss", {}).get("last_value") is not None, what="metric")
    assert state["hparams"]["lr"]["value"] == pytest.approx(0.02)
    assert state["hparams"]["dropout"]["value"] == pytest.approx(0.3)
    assert state["hparams"]["lr"]["changes"][-1]["sender"] == "journal (resumed run)"
    assert set(state["metrics"]) == {"twice_loss"}
    lr_now = second.call("eval", code="optimizer.param_groups[0]['lr']")
    assert lr_now["result"] == pytest.approx(0.02)
    second.call("stop")
    second.wait()
    assert len(scalars(second.run_dir, "bidviz/twice_loss")) > 0


def test_fresh_start_ignores_the_journal(start_trainer):
    first = start_trainer()
    first.call("set_hparam", name="lr", value=0.02)
    first.call("stop")
    first.wait()
    second = start_trainer("--fresh")
    state = second.wait_for(lambda s: "lr" in s["hparams"], what="lr registered")
    assert state["hparams"]["lr"]["value"] == pytest.approx(0.1)


def test_second_bridge_on_a_live_run_fails_clearly(start_trainer):
    first = start_trainer()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from bidviz import Bridge; Bridge(sys.argv[1])", str(first.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "BridgeBusyError" in proc.stderr
    assert f"pid {first.proc.pid}" in proc.stderr and "already has a live Bridge" in proc.stderr
    assert first.call("eval", code="1 + 1")["result"] == 2, "the first bridge is unharmed"


def test_lock_of_a_killed_bridge_is_taken_over(start_trainer):
    first = start_trainer()
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    assert json.loads(first.mailbox.owner_path.read_text())["pid"] == first.proc.pid
    second = start_trainer()
    assert json.loads(second.mailbox.owner_path.read_text())["pid"] == second.proc.pid
    assert second.call("eval", code="2 + 2")["result"] == 4


def test_busy_error_in_process(tmp_path):
    from bidviz import Bridge

    with Bridge(tmp_path / "run"):
        with pytest.raises(BridgeBusyError, match="already has a live Bridge"):
            Bridge(tmp_path / "run")
    with Bridge(tmp_path / "run") as again:  # released on close
        assert again.mailbox.liveness() == "live"
    assert Mailbox(tmp_path / "run").liveness() == "ended"


def test_mailbox_owned_by_someone_else_is_refused(tmp_path):
    from bidviz import Bridge
    from bidviz.channel import ChannelError

    (tmp_path / "run").mkdir()
    os.symlink(tmp_path, tmp_path / "run" / ".bidviz")
    with pytest.raises(ChannelError, match="must be a real directory"):
        Bridge(tmp_path / "run")

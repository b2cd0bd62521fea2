"""The Bridge split by role: one admission thread, a failed start that releases the run, bounded records, resume
that says what it could not restore, and user code that can never end the training loop."""

from __future__ import annotations

import json
import os
import time

import pytest
from bridge_helpers import journal_commands

from bidviz import Bridge, protocol
from bidviz.bridge import recorder as recorder_module
from bidviz.channel import Mailbox


def step_until(bridge: Bridge, done, limit: float = 20.0, start: int = 0) -> int:
    step = start
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "timed out"
        bridge.step(step)
        step += 1
        time.sleep(0.002)
    return step


def test_a_bridge_that_fails_to_start_releases_the_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TypeError):
        Bridge(run, writer=object())  # not a writer: refused after the mailbox was taken
    with Bridge(run) as bridge:  # not BridgeBusyError naming our own pid
        bridge.step(0)
    assert Mailbox(run).read_state()["closed"] is True


def test_eval_now_answers_while_the_training_thread_is_stuck_in_user_code_for_5s(start_trainer):
    t = start_trainer()
    t.wait_for(lambda s: s["step"] is not None, what="first step")
    stuck = t.send("eval", code="time.sleep(5)\n'woke'")
    t.wait_for(lambda s: s["pending"] == 0, what="the stuck eval taken")
    time.sleep(0.3)
    sent = time.monotonic()
    resp = t.call("eval", code="import threading\n(threading.current_thread().name, step)", now=True, timeout=4)
    took = time.monotonic() - sent
    assert resp["status"] == "applied", resp
    thread, _ = resp["result"]
    assert thread == "bidviz-mailroom" and took < 3.0, (thread, took)
    assert t.mailbox.read_response(stuck) is None, "the training thread is still in the stuck eval"
    assert t.mailbox.wait_response(stuck, 10)["repr"] == "'woke'"


def test_user_code_that_raises_systemexit_or_baseexception_never_stops_training(start_trainer):
    t = start_trainer("--budget", "2")
    raisers = [
        ("exits", "raise SystemExit(3)"),
        ("interrupts", "raise KeyboardInterrupt"),
        ("base", "class Boom(BaseException): pass\nraise Boom('x')"),
        ("gen", "raise GeneratorExit"),
    ]
    for name, code in raisers:
        # At once: the first-run check catches it, the metric stays installed, paused, and its sender is told.
        resp = t.call("add_metric", name=name, code=code)
        assert resp["status"] == "applied" and resp["result"]["status"] == "paused", resp
        assert resp["result"]["first_error"]["type"] in code, resp
        # Later, on a training step (the first run passes with its scratch state): the runner disables it.
        late = (
            "state['n'] = state.get('n', 0) + 1\nif state['n'] > 2:\n    "
            + code.replace("\n", "\n    ")
            + "\nreturn 1.0"
        )
        assert t.call("add_metric", name=f"late_{name}", code=late)["result"]["first_value"] == 1.0
    names = [n for n, _ in raisers]
    t.wait_for(
        lambda s: (
            all(s["metrics"][f"late_{n}"]["status"] == "disabled" for n in names)
            and all(s["metrics"][n]["status"] == "paused" for n in names)
        ),
        what="four metrics paused at their first run, four disabled when they raised on a step",
    )
    state = t.state()
    assert "SystemExit" in state["metrics"]["late_exits"]["last_error"]["message"]
    assert "training goes on" in state["metrics"]["late_base"]["last_error"]["message"]
    assert "SystemExit" in state["metrics"]["exits"]["last_error"]["message"]
    assert "training goes on" in state["metrics"]["base"]["last_error"]["message"]
    exit_eval = t.call("eval", code="exit(4)")
    assert exit_eval["status"] == "failed" and "SystemExit" in exit_eval["error"]["message"]

    class_code = "class R:\n    def __repr__(self):\n        raise SystemExit(9)\nR()"
    resp = t.call("eval", code=class_code)
    assert resp["status"] == "applied" and resp["repr"] == "<repr failed: SystemExit: 9>", resp
    looping = "class L:\n    def __repr__(self):\n        while True: pass\nL()"
    resp = t.call("eval", code=looping, timeout=30)
    assert resp["status"] == "failed" and resp["error"]["type"] == "MetricTimeout", resp
    dict_code = "class D(dict):\n    def items(self):\n        raise SystemExit(1)\nD(a=1)"
    resp = t.call("eval", code=dict_code)
    assert resp["status"] == "applied" and resp["result"] is None, "not JSON; its repr still answers"
    before = t.state()["step"]
    t.wait_for(lambda s: s["step"] > before + 5, what="training goes on")

    t.call("stop")
    assert t.wait()[0] == 0
    again = start_trainer("--budget", "2")  # the replay does not re-install anything that ends the run
    again.wait_for(lambda s: (s["step"] or 0) > 20, what="a restarted run that keeps training")
    restored = again.state()["metrics"]
    assert restored["late_exits"]["status"] == "disabled", restored["late_exits"]
    assert "SystemExit" in restored["late_exits"]["last_error"]["message"], "a resumed run still says why"
    assert restored["late_exits"]["last_error"]["disabled"].startswith("disabled"), restored["late_exits"]
    # A metric paused by its first run is tried again when the run resumes: it raises on a step and is disabled.
    assert restored["exits"]["status"] == "disabled", restored["exits"]
    assert "SystemExit" in restored["exits"]["last_error"]["message"]


def test_a_metric_that_starts_a_thread_each_step_is_disabled(start_trainer):
    from bidviz.bridge.runner import THREAD_STRIKES, THREADS_EVERY

    t = start_trainer()
    count = "import threading\nthreading.active_count()"
    at_start = t.call("eval", code=count)["result"]
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\nreturn 1.0"
    assert t.call("add_metric", name="spawner", code=code)["result"]["first_value"] == 1.0
    metric = t.wait_for(lambda s: s["metrics"]["spawner"]["status"] == "disabled", what="disabled")["metrics"]
    assert "threads" in metric["spawner"]["last_error"]["message"]
    # Threads are counted every THREADS_EVERY batches, then per metric for THREAD_STRIKES runs; the first run is one.
    leaked = t.call("eval", code=count)["result"] - at_start
    assert 0 < leaked <= 1 + THREADS_EVERY + THREAD_STRIKES, leaked
    step = t.state()["step"]
    t.wait_for(lambda s: s["step"] > step + 20, what="more steps")
    assert t.call("eval", code=count)["result"] - at_start == leaked, "a disabled metric starts no more threads"


def test_a_directory_in_the_inbox_is_answered_moved_aside_and_later_commands_still_work(start_trainer):
    t = start_trainer()
    d = t.mailbox.inbox / "d"
    d.mkdir()
    (d / "inside.json").write_text("{}")
    resp = t.mailbox.wait_response(protocol.id_from_filename("d"), 20)
    assert resp["status"] == "rejected" and resp["error"]["type"] == "NotAFile"
    assert t.call("set_hparam", name="lr", value=0.05)["status"] == "applied"
    assert not d.exists()
    t.call("stop")
    assert t.wait()[0] == 0
    again = start_trainer()  # and a restart does not crash on it
    assert again.call("set_hparam", name="lr", value=0.06)["status"] == "applied"


def test_two_files_with_the_same_id_are_applied_once(start_trainer, tmp_path):
    t = start_trainer()
    marker = tmp_path / "m"
    cmd = protocol.make_command("eval", {"code": f"open({str(marker)!r}, 'a').write('x')"})
    data = protocol.dumps(cmd.to_dict())
    for name in (protocol.inbox_name(cmd.id, cmd.sent_at), protocol.inbox_name(cmd.id, cmd.sent_at + 0.005)):
        tmp = t.mailbox.tmp / name
        tmp.write_bytes(data)
        os.rename(tmp, t.mailbox.inbox / name)
    assert t.mailbox.wait_response(cmd.id, 20)["status"] == "applied"
    deadline = time.monotonic() + 10
    while list(t.mailbox.inbox.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(t.mailbox.inbox.iterdir()) == []
    assert marker.read_text() == "x"
    assert len(journal_commands(t.mailbox, cmd.id)) == 1


def test_an_expired_command_is_answered_and_never_applied(tmp_path):
    run = tmp_path / "run"
    with Bridge(run) as bridge:
        bridge.hparam("lr", 0.1)
        bridge.step(0)
        cmd = protocol.make_command("set_hparam", {"name": "lr", "value": 0.5}, expires_in=-1.0)
        Mailbox(run).send(cmd)
        step_until(bridge, lambda: Mailbox(run).read_response(cmd.id) is not None, start=1)
        assert bridge.hparams["lr"] == 0.1
    resp = Mailbox(run).read_response(cmd.id)
    assert resp["status"] == "rejected" and resp["error"]["type"] == "Expired"


def test_several_values_apply_together_or_not_at_all(tmp_path):
    run = tmp_path / "run"
    mb = Mailbox(run)
    with Bridge(run) as bridge:
        bridge.hparam("lr", 0.1, min=0.0)
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9)
        bridge.step(0)
        bad = mb.send(protocol.make_command("set_hparam", {"values": {"lr": 0.5, "dropout": 5.0}}))
        step_until(bridge, lambda: mb.read_response(bad) is not None, start=1)
        assert mb.read_response(bad)["error"]["type"] == "OutOfBounds"
        assert dict(bridge.hparams) == {"lr": 0.1, "dropout": 0.1}
        good = mb.send(protocol.make_command("set_hparam", {"values": {"lr": 0.5, "dropout": 0.5}}))
        step_until(bridge, lambda: mb.read_response(good) is not None, start=1)
        assert dict(bridge.hparams) == {"lr": 0.5, "dropout": 0.5}
    (line,) = journal_commands(mb, good)
    assert line["label"] == "set lr=0.5, dropout=0.5"


def test_resume_says_what_it_could_not_restore(tmp_path):
    run = tmp_path / "run"
    mb = Mailbox(run)
    with Bridge(run) as bridge:  # a run whose journal holds a metric and a tuned value
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9)
        bridge.step(0)
        ids = [
            mb.send(protocol.make_command("add_metric", {"name": "m", "code": "step * 2"})),
            mb.send(protocol.make_command("set_hparam", {"name": "dropout", "value": 0.8})),
        ]
        step_until(bridge, lambda: all(mb.read_response(i) for i in ids), start=1)
    lines = mb.journal_path.read_text().splitlines()
    edited = [line.replace('"step * 2"', '"step *"') for line in lines]  # the code no longer compiles
    mb.journal_path.write_text("\n".join(edited) + "\n{cut line\n" + "[" * 100000 + "\n")
    with Bridge(run) as bridge:
        bridge.hparam("dropout", 0.1, min=0.0, max=0.5)  # its bounds changed: 0.8 no longer fits
        bridge.step(0)
        assert bridge.hparams["dropout"] == 0.1
        metric = bridge.state()["metrics"]["m"]
        assert metric["status"] == "disabled" and metric["last_error"]["type"] == "SyntaxError"
    failed = [e for e in mb.iter_journal() if e.get("event") == "restore_failed"]
    assert sorted(e["what"] for e in failed) == ["hparam dropout", "metric m"]
    assert all(e["message"] and e["label"] for e in failed)


def test_answered_commands_leave_the_outbox_and_tmp_leftovers_go(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "OUTBOX_MAX", 20)
    run = tmp_path / "run"
    mb = Mailbox(run)
    mb.create()
    stale = mb.tmp / "x.json.123.tmp"  # a sender killed mid-write, long ago
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with Bridge(run) as bridge:
        bridge.hparam("lr", 0.1)
        assert not stale.exists()
        step = 0
        for i in range(120):
            cid = mb.send(protocol.make_command("set_hparam", {"name": "lr", "value": i / 1000}))
            step = step_until(bridge, lambda cid=cid: mb.read_response(cid) is not None, start=step)
        assert len(list(mb.outbox.iterdir())) <= 20
        burst = [mb.send(protocol.make_command("set_hparam", {"name": "lr", "value": i / 100})) for i in range(15)]
        step_until(bridge, lambda: mb.read_response(burst[-1]) is not None, start=step)
        assert len(list(mb.outbox.iterdir())) <= 20, "a batch of answers does not push the outbox past its cap"
        assert list(mb.inbox.iterdir()) == []
    commands = [e for e in mb.iter_journal() if e.get("event") == "command"]
    assert len(commands) == 135, "the journal keeps every answer"
    state = json.loads(mb.state_path.read_text())
    assert state["hparams"]["lr"]["value"] == 0.14


def test_resume_reads_from_the_last_checkpoint_not_the_whole_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "CHECKPOINT_LINES", 50)
    run = tmp_path / "run"
    mb = Mailbox(run)
    with Bridge(run) as bridge:
        bridge.hparam("lr", 0.1)
        bridge.step(0)
        step = 1
        for i in range(130):
            cid = mb.send(protocol.make_command("set_hparam", {"name": "lr", "value": i / 1000}))
            step = step_until(bridge, lambda cid=cid: mb.read_response(cid) is not None, start=step)
        bridge.add_metric("twice", "step * 2")
        cid = mb.send(protocol.make_command("add_metric", {"name": "thrice", "code": "step * 3", "every": 2}))
        step_until(bridge, lambda: mb.read_response(cid) is not None, start=step)
    lines = mb.journal_path.read_bytes().splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith(b'{"event":"checkpoint"')]
    assert len(marks) >= 3 and marks[-1] == len(lines) - 1, "checkpoints now and then, and one at close"
    from bidviz.bridge.replay import last_checkpoint, read_lines

    tail = list(read_lines(mb.journal_path, last_checkpoint(mb.journal_path)))
    assert len(tail) == 1, "a resume reads one line"
    with Bridge(run) as bridge:
        bridge.hparam("lr", 0.1)
        assert bridge.hparams["lr"] == 0.129
        metrics = bridge.state()["metrics"]
        assert metrics["thrice"]["every"] == 2 and "twice" not in metrics, "API metrics are not journaled"
    with Bridge(run, resume=False) as bridge:  # a fresh start
        bridge.hparam("lr", 0.1)
        assert bridge.hparams["lr"] == 0.1
    with Bridge(run) as bridge:  # its checkpoint forgot the past
        bridge.hparam("lr", 0.1)
        assert bridge.hparams["lr"] == 0.1 and bridge.state()["metrics"] == {}

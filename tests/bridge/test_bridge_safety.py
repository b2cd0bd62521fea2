"""The safety net through real training processes: a bad lr blows a run up, the guard pauses it at the first
non-finite loss, a rewind to the snapshot before the change and a good lr bring the loss back; snapshots stay within
their budget; a rule acts once per cool-down and is journaled with what triggered it. Driven by `bidviz.connect`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bidviz
from bidviz.client import CommandRejected, Run
from bidviz.errors import ProtocolError
from bidviz.series import read_series

TRAINER = Path(__file__).with_name("safety_trainer.py")


class Loop:
    def __init__(self, run_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(TRAINER), str(run_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"trainer did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.run: Run = bidviz.connect(run_dir, wait=30)

    def until(self, predicate: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run.state
            if state and predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; state: {str(dict(self.run.state))[:3000]}")

    def end(self) -> None:
        if self.proc.poll() is None:
            try:
                self.run.stop()
            except bidviz.client.BIDVizError:
                self.proc.kill()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode in (0, -9), err


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Any]:
    started: list[Loop] = []

    def start(*args: str, name: str = "run") -> Loop:
        loop = Loop(tmp_path / name, *args)
        started.append(loop)
        return loop

    yield start
    for loop in started:
        if loop.proc.poll() is None:
            loop.proc.kill()
        loop.proc.communicate(timeout=30)


def _losses(run_dir: Path, until: Any = lambda points: True) -> list[tuple[int, float]]:
    """train/loss, once `until(points)` holds (the writer flushes about every second)."""
    deadline = time.monotonic() + 20
    while True:
        series, _ = read_series(run_dir)
        points = [(step, value) for step, _, value in series.get("train/loss", [])]
        if until(points) or time.monotonic() > deadline:
            return points
        time.sleep(0.1)


def _events(run: Run, event: str) -> list[dict[str, Any]]:
    return [e for e in run.journal() if e.get("event") == event]


def test_a_bad_lr_is_caught_by_the_guard_rewound_and_the_run_recovers(loops: Any, tmp_path: Path) -> None:
    loop = loops()
    run = loop.run
    loop.until(lambda s: (s.get("step") or 0) >= 150, "150 steps of training")
    change = run.set(lr=200.0)
    change_id = run.last["id"]  # type: ignore[index]
    assert change["old"] == pytest.approx(0.05)
    changed_at = run.last["step"]  # type: ignore[index]

    state = loop.until(lambda s: s.get("paused"), "the guard to pause the run")
    tripped = state["guard"]["tripped"]
    assert tripped["active"] and ("nan" in tripped["reason"] or "inf" in tripped["reason"])
    assert tripped["snapshot"]["command"] == change_id  # the last snapshot to rewind to: the one before the change
    losses = dict(_losses(tmp_path / "run", lambda p: any(not math.isfinite(v) for _, v in p)))
    first_bad = min(step for step, value in losses.items() if not math.isfinite(value))
    assert tripped["step"] == first_bad == state["step"]  # paused at the first non-finite loss
    guard_lines = _events(run, "guard_tripped")
    assert len(guard_lines) == 1 and guard_lines[0]["at_step"] == first_bad
    pause = [e for e in run.journal() if e.get("id") == tripped["command"]]
    assert pause and pause[0]["sender"] == "guard" and pause[0]["status"] == "applied"

    rewound = run.rewind(before=change_id)
    rewind_id = run.last["id"]  # type: ignore[index]
    assert rewound["from_step"] == changed_at and rewound["restored"] == ["model", "optimizer"]
    assert rewound["hparams"] == {"lr": pytest.approx(0.05)}  # the optimizer's lr came back with its state
    assert run.state["hparams"]["lr"]["value"] == pytest.approx(0.05)
    run.set(lr=0.02)
    run.resume()
    resumed_at = run.state["step"]
    loop.until(lambda s: s["step"] >= resumed_at + 120 and not s["paused"], "120 steps after the resume")

    points = _losses(tmp_path / "run", lambda p: p[-1][0] > resumed_at + 100)
    before = [v for s, v in points if changed_at - 20 <= s < changed_at]
    after = [v for s, v in points if s > resumed_at + 60]
    assert before and after and all(math.isfinite(v) for v in after)
    level = sum(before) / len(before)
    assert sum(after) / len(after) <= level * 1.05, (level, after[-5:])  # back at (or below) the earlier level

    series, _ = read_series(tmp_path / "run")
    assert [(s, v) for s, _, v in series["bidviz/rewinds"]] == [(first_bad, float(changed_at))]
    marks = _events(run, "rewound")
    assert marks and marks[0]["snapshot"] == rewound["snapshot"] and "lr" in marks[0]["hparams"]

    # The rewind is undoable: back to the blown-up weights, which the guard catches again.
    undone = run.rewind(before=rewind_id)
    assert undone["snapshot"] == rewound["undo"]
    loop.until(lambda s: s.get("paused") and s["guard"]["tripped"]["step"] > resumed_at, "the guard to trip again")
    loop.end()


def test_snapshots_stay_within_their_budget_across_100_changes(loops: Any) -> None:
    budget = 1_000_000  # width 2048 with momentum: ~160 KB of weights + ~160 KB of optimizer state a snapshot
    loop = loops("--width", "2048", "--snapshot-bytes", str(budget), "--no-guard")
    run = loop.run
    loop.until(lambda s: s.get("step") is not None, "the first step")
    commands = run.make([("set_hparam", {"name": "spike", "value": 1.0 + i / 1000}) for i in range(100)])
    run.deliver(commands)
    most = 0
    deadline = time.monotonic() + 60
    while not (run.mailbox.outbox / f"{commands[-1].id}.json").exists() and time.monotonic() < deadline:
        most = max(most, run.state["snapshots"]["bytes"])
        time.sleep(0.01)
    responses = run.responses(commands, 30)
    assert all(r is not None and r["status"] == "applied" for r in responses)
    snaps = run.state["snapshots"]
    kept = snaps["kept"]
    assert max(most, snaps["bytes"]) <= budget
    assert 2 <= len(kept) <= budget // kept[0]["bytes"] and kept[-1]["id"] == "s100"
    assert kept[-1]["command"] == commands[-1].id and snaps["note"] is None
    assert sum(k["bytes"] for k in kept) == snaps["bytes"]
    loop.end()

    # A model larger than the whole budget is skipped with a note; the change still applies.
    small = loops("--width", "2048", "--snapshot-bytes", "10000", "--no-guard", name="small")
    small.until(lambda s: s.get("step") is not None, "the first step")
    assert small.run.set(spike=2.0)["value"] == 2.0
    note = small.run.state["snapshots"]["note"]
    assert "skipped" in note and "more than the budget" in note and "snapshot_spill=True" in note
    assert [e["reason"] for e in _events(small.run, "snapshot_skipped")] == [note]
    with pytest.raises(CommandRejected, match="no snapshot") as caught:
        small.run.rewind()
    assert caught.value.error_type == "NoSnapshot"
    small.end()


def test_a_rule_halves_lr_on_a_gradient_spike_once_per_cooldown(loops: Any, tmp_path: Path) -> None:
    loop = loops("--no-guard", "--lr", "0.0005")
    run = loop.run
    loop.until(lambda s: s.get("step") is not None, "the first step")
    run.add_metric("gnorm", "sum(float(p.grad.norm()) ** 2 for p in model.parameters()) ** 0.5")
    run.rules.add("halve", "if metrics['gnorm'] > 50:\n    set(lr=hparams['lr'] / 2)", cooldown=25)
    run.rules.add("broken", "metrics['no such metric']", every=2)
    assert set(run.rules) == {"halve", "broken"}
    run.set(spike=300.0)
    state = loop.until(lambda s: s["rules"]["halve"]["fired"] >= 3, "the rule to fire three times", timeout=60)
    assert state["rules"]["broken"]["status"] == "disabled"
    run.rules.pause("halve")

    fired = _events(run, "rule_fired")
    halve = [e for e in fired if e["rule"] == "halve"][:3]
    assert [e["values"]["gnorm"] > 50 for e in halve] == [True] * 3  # the values that triggered it
    steps = [e["step"] for e in halve]
    assert all(b - a >= 25 for a, b in zip(steps, steps[1:], strict=False)), steps  # held by its cool-down
    sets = {e["id"]: e for e in run.journal() if e.get("kind") == "set_hparam" and e.get("sender") == "rule:halve"}
    lrs = [sets[e["commands"][0]]["response"]["result"]["value"] for e in halve]
    assert lrs == pytest.approx([0.00025, 0.000125, 0.0000625])
    assert all(sets[e["commands"][0]]["status"] == "applied" for e in halve)
    deadline = time.monotonic() + 20  # the writer flushes about every second
    while True:
        curve = [v for _, _, v in read_series(tmp_path / "run")[0].get("hparams/lr", [])]
        steps_of_lr = any(curve[i : i + 3] == pytest.approx(lrs) for i in range(len(curve)))
        if steps_of_lr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert steps_of_lr, curve  # the halvings, each a step of the hparams/lr curve
    errors = [e for e in run.journal() if e.get("event") in ("rule_error", "rule_disabled") and e["rule"] == "broken"]
    assert [e["event"] for e in errors] == ["rule_error"] * 5 + ["rule_disabled"]
    assert errors[0]["error"]["type"] == "KeyError"
    loop.end()


def test_a_resumed_run_keeps_its_rules_and_the_values_a_rewind_restored(loops: Any) -> None:
    first = loops("--no-guard")
    run = first.run
    first.until(lambda s: s.get("step") is not None, "the first step")
    run.rules.add("watch", "if metrics.get('nothing', 0) > 1: stop('never')", every=3, cooldown=7)
    run.rules.add("held", "pass")
    run.rules.pause("held")
    run.set(lr=0.5)
    change = run.last["id"]  # type: ignore[index]
    run.rewind(before=change)
    assert run.state["hparams"]["lr"]["value"] == pytest.approx(0.05)
    first.end()

    again = loops("--no-guard")  # the same run directory, resumed
    state = again.until(lambda s: s.get("step") is not None, "the first step")
    assert state["hparams"]["lr"]["value"] == pytest.approx(0.05)  # not the 0.5 the rewind undid
    rules = state["rules"]
    assert (rules["watch"]["every"], rules["watch"]["cooldown"], rules["watch"]["status"]) == (3, 7, "running")
    assert rules["held"]["status"] == "paused"
    assert state["snapshots"]["kept"] == []  # snapshots live in memory: a new process starts with none
    again.end()


def test_a_metric_marked_guard_trips_the_guard(loops: Any) -> None:
    loop = loops()
    run = loop.run
    start = loop.until(lambda s: s.get("step") is not None, "the first step")["step"] + 30
    run.add_metric("calm", "0.0")  # not guarded: its values are its own business
    run.add_metric("probe", f"float('inf') if step >= {start} else 1.0", guard=True)
    state = loop.until(lambda s: s.get("paused"), "the guard to pause the run")
    trip = state["guard"]["tripped"]
    assert trip["what"] == "metric probe" and trip["step"] == start and "metric probe is inf" in trip["reason"]
    assert state["guard"]["metrics"] == ["probe"]
    run.remove_metric("probe")
    run.resume()
    assert loop.until(lambda s: not s["paused"], "the resume")["guard"]["metrics"] == []
    loop.end()


HOSTILE_RULES = {
    "exits": ("raise SystemExit(3)", "SystemExit"),
    "interrupts": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    "spins": ("while True:\n    pass", "MetricTimeout"),
    "swallows": ("while True:\n    try:\n        pass\n    except Exception:\n        pass", "MetricTimeout"),
    "floods": ("for i in range(10**6):\n    set(lr=0.01)", "ProtocolError"),
    "nan": ("set(lr=float('nan'))", "ProtocolError"),
    "unknown": ("set(nope=1)", "ProtocolError"),
    "badname": ("set(**{'no such name': 1})", "ProtocolError"),
    "rewinds": ("rewind(to=-1)", "ProtocolError"),
    "reason": ("pause('x' * 10_000)", "ProtocolError"),
}


def test_hostile_rules_are_their_own_failures_and_nothing_they_tried_is_sent(loops: Any) -> None:
    loop = loops("--no-guard", "--budget", "1")
    run = loop.run
    loop.until(lambda s: s.get("step") is not None, "the first step")
    for name, (code, _) in HOSTILE_RULES.items():
        run.rules.add(name, code)
    state = loop.until(
        lambda s: all(s["rules"][n]["status"] == "disabled" for n in HOSTILE_RULES), "every rule disabled", 90
    )
    for name, (_, error) in HOSTILE_RULES.items():
        assert state["rules"][name]["last_error"]["type"] == error, (name, state["rules"][name]["last_error"])
        assert state["rules"][name]["fired"] == 0
    assert "at most 16 times a run" in state["rules"]["floods"]["last_error"]["message"]
    assert 'File "<metric rule unknown>", line 1' in state["rules"]["unknown"]["last_error"]["traceback"]
    journal = run.journal()
    assert not [e for e in journal if str(e.get("sender", "")).startswith("rule:")]  # nothing was sent
    assert state["hparams"]["lr"]["value"] == pytest.approx(0.05) and not state["paused"]
    before = state["step"]
    assert loop.until(lambda s: s["step"] > before + 20, "training goes on")
    # Bad rewind arguments are refused by the kinds table before anything is sent (and by the bridge alike).
    with pytest.raises(ProtocolError, match="not both"):
        run.request("rewind", {"to": 3, "before": "a" * 32})
    with pytest.raises(ProtocolError, match="32 hex digits"):
        run.rewind(before="../../etc")
    with pytest.raises(ProtocolError, match="integer >= 0"):
        run.rewind(to=-5)
    loop.end()

"""The metrics of a step run as one batch under the hook budget (issue 12): a hook past its budget among others is
interrupted and named while the others write every step; a value whose type changes is written by its new kind; an
interrupt never lands in the training loop. Real Bridge, real event files read back."""

from __future__ import annotations

import time

import numpy as np
import torch

from bidviz import protocol
from bidviz.bridge import Bridge
from bidviz.channel import Mailbox
from bidviz.writers import read_scalars

# Swallows everything an `except Exception` can: the budget's interrupt is a BaseException, raised again each budget.
STUBBORN = "while True:\n    try:\n        x = sum(range(1000))\n    except Exception:\n        pass"


def test_a_slow_hook_in_a_batch_is_named_and_the_others_write_every_step(tmp_path):
    steps = 6
    with Bridge(tmp_path / "run", hook_budget=0.3) as bridge:
        bridge.add_metric("before", "loss * 2")
        bridge.add_metric("stubborn", STUBBORN)
        bridge.add_metric("after", "{'a': loss, 'b': step}")
        t0 = time.monotonic()
        for step in range(steps):
            bridge.step(step, loss=float(step))  # an interrupt escaping into the loop would raise here
        elapsed = time.monotonic() - t0
        metrics = bridge.state()["metrics"]
    stubborn = metrics["stubborn"]
    assert stubborn["status"] == "disabled"
    assert stubborn["last_error"]["type"] == "MetricTimeout"
    assert "'stubborn'" in stubborn["last_error"]["message"] and "0.3 s budget" in stubborn["last_error"]["message"]
    assert stubborn["error_count"] == 1
    assert 0.3 <= elapsed < 3.0, "interrupted after its budget, not before, and not long after"
    assert metrics["before"]["error_count"] == metrics["after"]["error_count"] == 0
    series = read_scalars(tmp_path / "run")
    assert [v for _, _, v in series["bidviz/before"]] == [2.0 * s for s in range(steps)]
    assert [s for s, _, _ in series["bidviz/after/b"]] == list(range(steps)), "the hook after the slow one ran too"


def test_a_value_whose_type_changes_is_written_by_its_new_kind(tmp_path):
    code = (
        "kinds = [1.5, 2, True, np.float32(3.5), torch.tensor(4.5), np.array(5.5), {'k': 6}, None, 'seven', "
        "np.arange(3.0), 8.5, [9]]\nreturn kinds[step]"
    )
    with Bridge(tmp_path / "run", namespace={"np": np, "torch": torch}) as bridge:
        bridge.add_metric("v", code)
        for step in range(12):
            bridge.step(step)
        m = bridge.state()["metrics"]["v"]
    series = read_scalars(tmp_path / "run")
    assert [(s, v) for s, _, v in series["bidviz/v"]] == [
        (0, 1.5),
        (1, 2.0),
        (2, 1.0),
        (3, 3.5),
        (4, 4.5),
        (5, 5.5),
        (10, 8.5),
    ]
    assert series["bidviz/v/k"] == [(6, series["bidviz/v/k"][0][1], 6.0)]
    recent = dict((s, v) for s, v in m["recent"])
    assert recent[8] == "seven" and recent[9]["n"] == 3 and 7 not in recent
    assert m["error_count"] == 1 and "list" in m["last_error"]["message"], "a list is no metric value: its error"
    assert m["last_value"] == 8.5 and m["last_step"] == 10


def test_an_explicit_kind_that_does_not_fit_is_an_error_each_time(tmp_path):
    with Bridge(tmp_path / "run") as bridge:
        bridge.add_metric("t", "1.0 if step % 2 else 'text'", kind="text")
        for step in range(4):
            bridge.step(step)
        m = bridge.state()["metrics"]["t"]
    assert m["error_count"] == 2 and m["status"] == "running"
    assert "kind 'text' needs a str" in m["last_error"]["message"]


def test_a_loop_with_metrics_applies_a_command_at_the_step_after_it_arrives(tmp_path):
    """Between two looks at the rest (about every 10 ms of a fast loop), a loop with metrics only runs them; a command
    handed off in between has the very next step apply it, not the next look, however many steps ahead that is."""
    mb = Mailbox(tmp_path / "run")
    with Bridge(tmp_path / "run") as bridge:
        bridge.hparam("lr", 0.1, min=0.0)
        bridge.add_metric("twice", "step * 2.0")
        parts = bridge._parts
        step = 0
        while parts._house_at < step + 50:  # until the loop is fast enough that the next look is 50 steps ahead
            bridge.step(step, loss=1.0)
            step += 1
            assert step < 1_000_000, "the next look never got ahead of the loop"
        cid = mb.send(protocol.make_command("set_hparam", {"name": "lr", "value": 0.5}))
        handed_at, deadline = None, time.monotonic() + 20
        while (resp := mb.read_response(cid)) is None:
            bridge.step(step, loss=1.0)
            if handed_at is None and len(parts.handoff):
                handed_at = step  # handed off during this step or after it: the next step applies it
            step += 1
            assert time.monotonic() < deadline, "no response"
        assert bridge.hparams["lr"] == 0.5
    assert resp["status"] == "applied"
    assert handed_at is None or resp["step"] == handed_at + 1, (handed_at, resp["step"])
    series = read_scalars(tmp_path / "run")
    assert [s for s, _, _ in series["bidviz/twice"]] == list(range(step)), "the metric ran at every step"

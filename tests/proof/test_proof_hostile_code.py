"""Part 5: hostile metric and eval code, on one live trainer with a 1 s hook budget. Each case: training goes on,
the command or metric gets its failure answer (a failed response; a metric reported and disabled), and a restart
(resume) on that journal neither crashes nor hangs: first a kill -9 while the metrics are still failing (they are
restored running and fail again), then one after they were all disabled (they stay disabled, no eval re-runs).

Documented limits, not tested as failures: a hook blocked in one long C call (`time.sleep`) is interrupted only
when the call returns (the 3 s sleep against a 1 s budget below), and `os._exit()` ends the process.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from proof_helpers import Figures, JournalReader, Trainer, report, send, wait_responses

from bidviz import protocol

BUDGET = "1"

# A loop whose `except Exception` would keep the budget's interrupt (if it were an Exception) and go on forever.
SWALLOW = "while True:\n    try:\n        sum(range(1000))\n    except Exception:\n        pass"

# (case, code, now, expected status, expected error type; for an applied one, a part of its repr)
EVALS: list[tuple[str, str, bool, str, str]] = [
    ("SystemExit", "raise SystemExit(3)", False, "failed", "SystemExit"),
    ("KeyboardInterrupt raised by code", "raise KeyboardInterrupt", False, "failed", "KeyboardInterrupt"),
    ("BaseException subclass", "class Boom(BaseException):\n    pass\nraise Boom('x')", False, "failed", "Boom"),
    ("GeneratorExit", "raise GeneratorExit", False, "failed", "GeneratorExit"),
    ("exit()", "exit()", False, "failed", "SystemExit"),
    ("sys.exit(4)", "import sys\nsys.exit(4)", False, "failed", "SystemExit"),
    (
        "__repr__ raises SystemExit",
        "class R:\n    def __repr__(self):\n        raise SystemExit(1)\nR()",
        False,
        "applied",
        "<repr failed: SystemExit",
    ),
    (
        "__repr__ raises KeyboardInterrupt",
        "class R:\n    def __repr__(self):\n        raise KeyboardInterrupt\nR()",
        False,
        "failed",
        "KeyboardInterrupt",
    ),
    (
        "__repr__ loops forever",
        "class R:\n    def __repr__(self):\n        while True:\n            pass\nR()",
        False,
        "failed",
        "MetricTimeout",
    ),
    (
        "dict subclass items() raises SystemExit",
        "class D(dict):\n    def items(self):\n        raise SystemExit\nD(a=1)",
        False,
        "applied",
        "{'a': 1}",
    ),
    ("sleep 3 s, budget 1 s", "time.sleep(3)\n'woke'", False, "failed", "MetricTimeout"),
    ("infinite loop", "while True:\n    pass", False, "failed", "MetricTimeout"),
    ("infinite loop, now", "while True:\n    pass", True, "failed", "MetricTimeout"),
    ("loop that swallows Exception", SWALLOW, False, "failed", "MetricTimeout"),
    ("SystemExit, now", "raise SystemExit(5)", True, "failed", "SystemExit"),
    ("'1+' * 100000 (past the code limit)", "1+" * 100_000, False, "rejected", "TooLarge"),
    ("compiler recursion", "1+" * 49_999 + "1", False, "rejected", "SyntaxError"),
    ("parser stack overflow", "-" * 99_999 + "1", False, "rejected", "SyntaxError"),
    ("nested parentheses", "(" * 50_000 + ")" * 50_000, False, "rejected", "SyntaxError"),
    ("infinite recursion", "def f():\n    return f()\nf()", False, "failed", "RecursionError"),
]

# (metric name, code, expected status once settled, expected last error type)
METRICS: list[tuple[str, str, str, str | None]] = [
    ("m_systemexit", "raise SystemExit(3)", "disabled", "SystemExit"),
    ("m_keyboardinterrupt", "raise KeyboardInterrupt", "disabled", "KeyboardInterrupt"),
    ("m_base", "class Boom(BaseException):\n    pass\nraise Boom()", "disabled", "Boom"),
    ("m_generatorexit", "raise GeneratorExit", "disabled", "GeneratorExit"),
    ("m_exit", "exit()", "disabled", "SystemExit"),
    (
        "m_float_loops",
        "class F(float):\n    def __float__(self):\n        while True:\n            pass\nreturn F(1.0)",
        "disabled",
        "MetricTimeout",
    ),
    (
        "m_items",
        "class D(dict):\n    def items(self):\n        raise SystemExit\nreturn D(a=1)",
        "disabled",
        "SystemExit",
    ),
    (
        "m_thread",
        "import threading\nthreading.Thread(target=time.sleep, args=(5,), daemon=True).start()\nreturn 1",
        "disabled",
        "ThreadsLeft",
    ),
    ("m_sleep", "time.sleep(3)\nreturn 1", "disabled", "MetricTimeout"),
    ("m_loop", "while True:\n    pass", "disabled", "MetricTimeout"),
    ("m_swallow", SWALLOW, "disabled", "MetricTimeout"),
    ("m_recursion", "def f():\n    return f()\nreturn f()", "disabled", "RecursionError"),
    ("m_repr", "class R(float):\n    def __repr__(self):\n        raise SystemExit\nreturn R(2.0)", "running", None),
    ("m_fine", "loss", "running", None),
]
REJECTED_METRICS = [("m_deep", "-" * 99_999 + "1"), ("m_chain", "1+" * 49_999 + "1")]


class Table:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.trainer = Trainer(root / "run", "--budget", BUDGET)
        self.figures = Figures("hostile-code", notes={"evals": len(EVALS), "metrics": len(METRICS) + 2})
        self.started = time.monotonic()
        self.sent: dict[str, str] = {}  # id -> case
        self.evals: dict[str, dict[str, Any]] = {}  # case -> response
        self.restarts = 0

    def restart(self) -> None:
        self.trainer.kill9()
        self.trainer = Trainer(self.root / "run", "--budget", BUDGET)  # AssertionError if it does not start
        self.restarts += 1
        self.trainer.wait_step_past(self.trainer.wait_step_past(None), timeout=30)

    def settled(self, timeout: float = 90.0) -> dict[str, Any]:
        """The state once every metric reached its expected status."""
        want = {name: status for name, _, status, _ in METRICS}
        return self.trainer.wait_state(
            lambda s: {n: m["status"] for n, m in s["metrics"].items()} == want,
            timeout,
            "every hostile metric disabled",
        )


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Any:
    t = Table(tmp_path_factory.mktemp("hostile"))
    yield t
    t.figures.seconds = time.monotonic() - t.started
    t.figures.notes["restarts"] = t.restarts
    report(t.figures)
    t.trainer.kill9()


def test_hostile_metrics_are_added_and_a_kill_while_they_fail_restarts_cleanly(table: Table) -> None:
    t = table.trainer
    t.wait_step_past(None)
    ids = {send(t.mailbox, "add_metric", {"name": n, "code": c}): n for n, c, _, _ in METRICS}
    rejected = {send(t.mailbox, "add_metric", {"name": n, "code": c}): n for n, c in REJECTED_METRICS}
    got = wait_responses(t.mailbox, [*ids, *rejected], 60)
    table.figures.tried += len(ids) + len(rejected)
    table.figures.answered += len(got)
    table.figures.lost += len(ids) + len(rejected) - len(got)
    assert {ids[c]: r["status"] for c, r in got.items() if c in ids} == {n: "applied" for n in ids.values()}
    for cid in rejected:
        assert got[cid]["status"] == "rejected" and got[cid]["error"]["type"] == "SyntaxError", got[cid]
    time.sleep(0.5)  # some metrics have failed, none is disabled yet (m_sleep stalls the first step 3 s)
    table.restart()  # restored running: they fail again in the new process


def test_training_goes_on_and_every_metric_is_reported_and_disabled(table: Table) -> None:
    step = table.trainer.wait_step_past(None)
    state = table.settled()
    # Errors as the journal has them, over both processes: one disabled before the kill shows no last_error in
    # the state of the next (the journal keeps it).
    errors = {e["metric"]: e["error"] for e in table.trainer.mailbox.iter_journal() if e.get("event") == "metric_error"}
    disabled = {e["metric"] for e in table.trainer.mailbox.iter_journal() if e.get("event") == "metric_disabled"}
    for name, _, _, error in METRICS:
        m = state["metrics"][name]
        if error is None:
            assert m["error_count"] == 0 and m["last_step"] is not None and name not in errors, (name, m)
        else:
            assert errors[name]["type"] == error and errors[name]["message"], (name, errors[name])
            assert name in disabled
    table.trainer.wait_step_past(step)


@pytest.mark.parametrize("case, code, now, status, error", EVALS, ids=[e[0] for e in EVALS])
def test_hostile_eval_gets_its_failure_answer_and_training_goes_on(table: Table, case, code, now, status, error):
    t = table.trainer
    step = t.wait_step_past(None)
    cid = protocol.new_id()  # written as is: a client would refuse to send code past the limit
    command = {"v": 1, "id": cid, "kind": "eval", "args": {"code": code, "now": now}, "sent_at": time.time()}
    tmp = t.mailbox.tmp / f"{cid}.tmp"
    tmp.write_text(json.dumps(command))
    os.rename(tmp, t.mailbox.inbox / protocol.inbox_name(cid))
    table.sent[cid] = case
    table.figures.tried += 1
    resp = t.mailbox.wait_response(cid, 30)
    if resp is None:
        table.figures.lost += 1
    else:
        table.figures.answered += 1
    if not t.alive():
        table.figures.crashed += 1
    assert resp is not None, f"no answer; stderr: {t.stderr()}"
    table.evals[case] = resp
    assert resp["status"] == status, resp
    if status == "applied":
        assert error in resp["repr"], resp
    else:
        assert resp["error"]["type"] == error, resp["error"]
        assert resp["error"]["message"]
    t.wait_step_past(step, timeout=10)


def test_a_restart_after_all_of_it_keeps_them_disabled_and_reruns_nothing(table: Table) -> None:
    journal = JournalReader(table.trainer.mailbox)
    journal.new_entries()
    twice = [table.sent[c] for c in table.sent if journal.commands[c] != 1]
    table.figures.double += len(twice)
    assert not twice, f"not exactly one journal line: {twice}"
    table.restart()
    t = table.trainer
    state = table.settled(timeout=20)
    assert all(m["error_count"] == 0 for m in state["metrics"].values()), "a disabled metric ran again"
    rate = t.wait_state(lambda s: s["steps_per_sec"] > 20, 20, "full speed")["steps_per_sec"]
    table.figures.notes["steps_per_sec_after"] = round(rate)
    assert t.alive()


def test_keyboard_interrupt_raised_by_code_in_a_job_that_ignores_sigint(table: Table, tmp_path: Path) -> None:
    """A job started in the background (`&`, nohup) ignores SIGINT, so no Ctrl-C can reach it: a KeyboardInterrupt
    is the code's own, a failure like any other (it ended such a run before)."""
    t = Trainer(tmp_path / "run", "--budget", BUDGET, sigint_ignored=True)
    try:
        step = t.wait_step_past(None)
        metric = send(t.mailbox, "add_metric", {"name": "m_kbint", "code": "raise KeyboardInterrupt"})
        evals = [send(t.mailbox, "eval", {"code": "raise KeyboardInterrupt", "now": now}) for now in (False, True)]
        got = wait_responses(t.mailbox, [metric, *evals], 30)
        table.figures.tried += 3
        table.figures.answered += len(got)
        table.figures.lost += 3 - len(got)
        if not t.alive():
            table.figures.crashed += 1
        assert t.alive(), t.stderr()
        assert got[metric]["status"] == "applied", got[metric]
        assert got[metric]["result"]["first_error"]["type"] == "KeyboardInterrupt", got[metric]  # its first run
        for cid in evals:
            assert got[cid]["status"] == "failed" and got[cid]["error"]["type"] == "KeyboardInterrupt", got[cid]
        resumed = wait_responses(t.mailbox, [send(t.mailbox, "resume_metric", {"name": "m_kbint"})], 30)
        assert [r["status"] for r in resumed.values()] == ["applied"], resumed
        t.wait_state(lambda s: s["metrics"]["m_kbint"]["status"] == "disabled", 20, "m_kbint disabled")
        t.wait_step_past(step)
    finally:
        t.kill9()


def test_keyboard_interrupt_raised_by_eval_now_under_a_sigint_handler_of_the_users(table: Table, tmp_path: Path):
    """With the user's own SIGINT handler, a KeyboardInterrupt in the training thread cannot be told from a Ctrl-C
    (it ends training, as documented); in the mailroom thread it never is one (signals go to the main thread): an
    eval --now that raises it is answered failed, and the mailroom goes on (it died before)."""
    t = Trainer(tmp_path / "run", "--own-sigint")
    try:
        t.wait_step_past(None)
        first = send(t.mailbox, "eval", {"code": "raise KeyboardInterrupt", "now": True})
        resp = t.mailbox.wait_response(first, 30)
        then = t.mailbox.wait_response(send(t.mailbox, "eval", {"code": "6 * 7", "now": True}), 30)
        table.figures.tried += 2
        table.figures.answered += (resp is not None) + (then is not None)
        table.figures.lost += (resp is None) + (then is None)
        assert resp is not None and resp["status"] == "failed", resp
        assert resp["error"]["type"] == "KeyboardInterrupt"
        assert then is not None and then["result"] == 42, "the mailroom goes on"
    finally:
        t.kill9()

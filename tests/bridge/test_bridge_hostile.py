"""Bad input gets a clear answer and loses nothing: every command file gets exactly one response."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from bridge_helpers import Trainer, journal_commands

from bidviz import protocol


def drop(trainer, name: str, data: bytes) -> Path:
    """Write raw bytes as a command file the way a client does (tmp, then rename into inbox/)."""
    tmp = trainer.mailbox.tmp / (name + ".tmp")
    tmp.write_bytes(data)
    dest = trainer.mailbox.inbox / name
    os.rename(tmp, dest)
    return dest


def wait_response(trainer, cid: str) -> dict:
    resp = trainer.mailbox.wait_response(cid, 20)
    assert resp is not None, f"no response for {cid}"
    return resp


def raw_command(kind: str, args: dict, cid: str | None = None) -> tuple[str, dict]:
    cid = cid or protocol.new_id()
    return cid, {"v": 1, "id": cid, "kind": kind, "args": args, "sender": "test", "sent_at": time.time()}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    t = Trainer(tmp_path_factory.mktemp("hostile") / "run")
    yield t
    t.kill()


@pytest.mark.parametrize(
    "body, error_type, words",
    [
        (b"{not json", "BadJSON", "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00", "BadJSON", "not valid UTF-8 JSON"),
        (b"[1, 2]", "BadJSON", "must be a JSON object"),
        (b'{"v": 2}', "BadVersion", "protocol version must be 1"),
    ],
)
def test_unparseable_files_get_a_response_named_by_the_file(trainer, body, error_type, words):
    cid = protocol.new_id()
    path = drop(trainer, protocol.inbox_name(cid), body)
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected"
    assert resp["error"]["type"] == error_type
    assert words in resp["error"]["message"]
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:  # removed right after the response is written
        time.sleep(0.01)
    assert not path.exists(), "an answered command file is removed from the inbox"
    assert len(journal_commands(trainer.mailbox, cid)) == 1


@pytest.mark.parametrize(
    "kind, args, error_type, words",
    [
        ("explode", {}, "UnknownKind", "expected one of set_hparam"),
        (
            "set_hparam",
            {"name": "nope", "value": 1},
            "UnknownName",
            "dampening, dropout, lr, mode, momentum, slow_setter, weight_decay",
        ),
        ("set_hparam", {"name": "lr", "value": "fast"}, "WrongType", "lr takes a number; received 'fast'"),
        ("set_hparam", {"name": "lr", "value": True}, "WrongType", "received True"),
        ("set_hparam", {"name": "dropout", "value": 0.95}, "OutOfBounds", "between 0.0 and 0.9"),
        ("set_hparam", {"name": "lr", "value": -0.1}, "OutOfBounds", ">= 0.0"),
        ("set_hparam", {"name": "mode", "value": "medium"}, "OutOfBounds", "one of 'fast', 'slow'"),
        ("set_hparam", {"name": "lr"}, "InvalidArgs", "missing value"),
        ("set_hparam", {"name": "lr", "value": 1, "extra": 2}, "InvalidArgs", "unknown extra"),
        ("add_metric", {"name": "m", "code": "x = (1,\n  2"}, "SyntaxError", "line 1"),
        ("add_metric", {"name": "../evil", "code": "1"}, "InvalidName", "no '..'"),
        ("add_metric", {"name": "m", "code": "1", "every": 0}, "InvalidArgs", "'every' must be an integer >= 1"),
        ("add_metric", {"name": "m", "code": "1", "kind": "movie"}, "InvalidArgs", "auto, scalar"),
        ("remove_metric", {"name": "ghost"}, "UnknownName", "no metric 'ghost'"),
        ("eval", {"code": "def f(:\n  pass"}, "SyntaxError", "line 1"),
    ],
)
def test_invalid_commands_are_rejected_with_what_was_expected(trainer, kind, args, error_type, words):
    trainer.wait_for(lambda s: s["step"] is not None, what="first step")
    cid, obj = raw_command(kind, args)
    drop(trainer, protocol.inbox_name(cid), json.dumps(obj).encode())
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected", resp
    assert resp["error"]["type"] == error_type
    assert words in resp["error"]["message"]
    assert len(journal_commands(trainer.mailbox, cid)) == 1


def test_syntax_error_reports_the_users_line_and_column(trainer):
    resp = trainer.call("add_metric", name="m", code="a = 1\nb = (a +\nreturn b")
    assert resp["status"] == "rejected"
    assert resp["error"]["line"] == 2
    assert "line 2" in resp["error"]["message"] and "column" in resp["error"]["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_rejected(trainer, literal):
    cid, obj = raw_command("set_hparam", {"name": "lr", "value": 0})
    data = json.dumps(obj).replace('"value": 0', f'"value": {literal}').encode()
    drop(trainer, protocol.inbox_name(cid), data)
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected"
    assert literal in resp["error"]["message"]
    assert trainer.state()["hparams"]["lr"]["value"] == 0.1


def test_overflowing_number_is_rejected_as_not_finite(trainer):
    trainer.wait_for(lambda s: s["step"] is not None, what="first step")
    cid, obj = raw_command("set_hparam", {"name": "lr", "value": 0})
    drop(trainer, protocol.inbox_name(cid), json.dumps(obj).replace('"value": 0', '"value": 1e999').encode())
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected" and "must be finite" in resp["error"]["message"]


def test_oversized_file_is_rejected_unread(trainer):
    cid, obj = raw_command("eval", {"code": "1"})
    obj["padding"] = "x" * (300 * 1024)
    drop(trainer, protocol.inbox_name(cid), json.dumps(obj).encode())
    resp = wait_response(trainer, cid)
    assert resp["error"]["type"] == "TooLarge"
    assert "limit is 262144" in resp["error"]["message"]


def test_symlink_is_rejected_and_its_target_untouched(trainer, tmp_path):
    target = tmp_path / "secret.json"
    cid, obj = raw_command("eval", {"code": "open('/etc/hostname').read()"})
    target.write_text(json.dumps(obj))
    link = trainer.mailbox.inbox / protocol.inbox_name(cid)
    os.symlink(target, link)
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected" and resp["error"]["type"] == "NotAFile"
    assert resp["result"] is None
    assert target.exists() and not link.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to create a file owned by another user")
def test_file_owned_by_another_user_is_rejected(trainer):
    cid, obj = raw_command("eval", {"code": "1 + 1"})
    tmp = trainer.mailbox.tmp / "foreign.tmp"
    tmp.write_text(json.dumps(obj))
    os.chown(tmp, 65534, 65534)
    os.rename(tmp, trainer.mailbox.inbox / protocol.inbox_name(cid))
    resp = wait_response(trainer, cid)
    assert resp["status"] == "rejected" and resp["error"]["type"] == "NotOwned"
    assert "uid 65534" in resp["error"]["message"]


def test_badly_named_file_is_answered_under_its_own_name(trainer):
    drop(trainer, "hello world!.json", b"{}")
    resp = wait_response(trainer, protocol.id_from_filename("hello world!.json"))
    assert resp["error"]["type"] == "BadFileName"


def test_mismatched_id_is_rejected(trainer):
    cid, obj = raw_command("eval", {"code": "1"})
    other = protocol.new_id()
    drop(trainer, protocol.inbox_name(other), json.dumps(obj).encode())
    resp = wait_response(trainer, other)
    assert resp["error"]["type"] == "InvalidId"


def test_a_burst_of_mixed_commands_gets_exactly_one_response_each(trainer):
    ids = []
    for i in range(30):
        if i % 3 == 0:
            cid = protocol.new_id()
            drop(trainer, protocol.inbox_name(cid), b"garbage")
        else:
            cid = trainer.send("set_hparam", name="dropout", value=(i % 10) / 10)
        ids.append(cid)
    for cid in ids:
        wait_response(trainer, cid)
    time.sleep(0.5)
    for cid in ids:
        assert len(journal_commands(trainer.mailbox, cid)) == 1
    assert {p.stem for p in trainer.mailbox.outbox.iterdir()} >= set(ids)
    assert list(trainer.mailbox.inbox.iterdir()) == []


def test_signed_bridge_rejects_unsigned_and_badly_signed_commands(start_trainer):
    t = start_trainer(env={"BIDVIZ_SECRET": "s3cret"})
    good = t.mailbox.wait_response(t.send("eval", secret="s3cret", code="6 * 7"), 20)
    assert good["status"] == "applied" and good["result"] == 42
    for secret in (None, "wrong"):
        resp = t.mailbox.wait_response(t.send("eval", secret=secret, code="6 * 7"), 20)
        assert resp["status"] == "rejected" and resp["error"]["type"] == "BadSignature"
    assert t.state()["signed"] is True


def test_mailbox_is_private(trainer):
    trainer.call("eval", code="1")
    for d in (trainer.mailbox.root, trainer.mailbox.inbox, trainer.mailbox.outbox, trainer.mailbox.tmp):
        assert oct(d.stat().st_mode & 0o777) == oct(0o700)
    for f in [trainer.mailbox.journal_path, trainer.mailbox.state_path, *trainer.mailbox.outbox.iterdir()]:
        assert oct(f.stat().st_mode & 0o777) == oct(0o600), f


UNDESCRIBABLE = [
    ("raise type('Odd', (Exception,), {})()", "Odd"),  # made where no __name__ is set: no __module__
    ("raise type('OddExit', (BaseException,), {})('x')", "OddExit"),
    ("class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise E()", "E"),
    ("class E(Exception):\n    def __str__(self):\n        return 42\nraise E()", "E"),  # str() of it: TypeError
]


@pytest.mark.parametrize(("code", "error_type"), UNDESCRIBABLE)
def test_an_error_that_cannot_be_described_still_gets_its_answer(trainer, code, error_type):
    """Describing an error runs the user's code too (its class, its __str__): a failed description must not lose
    the answer nor the training process."""
    resp = trainer.call("eval", code=code)
    assert resp["status"] == "failed", resp
    assert resp["error"]["type"] == error_type
    assert isinstance(resp["error"]["message"], str) and resp["error"]["traceback"]
    assert trainer.call("eval", code="6 * 7")["result"] == 42


# Describing an error runs the user's code, which may never return or may raise what ends a program. Each case:
# (code, the error's type, words of the message). Budget of the trainer below: 1 s.
UNSAYABLE = {
    "str loops": (
        "class E(Exception):\n    def __str__(self):\n        while True:\n            pass\nraise E()",
        "E",
        "could not be described: describing it ran longer than its 1 s budget",
    ),
    "str exits": ("class E(Exception):\n    def __str__(self):\n        raise SystemExit(3)\nraise E()", "E", "raised"),
    "str interrupts": (
        "class E(Exception):\n    def __str__(self):\n        raise KeyboardInterrupt\nraise E()",
        "E",
        "could not be described: describing it raised KeyboardInterrupt",
    ),
    "name loops": (
        "class M(type):\n    @property\n    def __name__(cls):\n        while True:\n            pass\n"
        "class E(Exception, metaclass=M):\n    def __str__(self):\n        while True:\n            pass\nraise E()",
        "E",
        "could not be described",
    ),
    "notes loop": (
        "class E(Exception):\n    @property\n    def __notes__(self):\n        while True:\n            pass\n"
        "raise E('x')",
        "E",
        "could not be described",
    ),
    "exit's argument loops": (
        "class R:\n    def __repr__(self):\n        while True:\n            pass\n    __str__ = __repr__\n"
        "raise SystemExit(R())",
        "SystemExit",
        "SystemExit raised by user code; training goes on",
    ),
    "traceback property exits": (
        "class E(BaseException):\n    @property\n    def __traceback__(self):\n        raise SystemExit(1)\n"
        "raise E('y')",
        "E",
        "E(y) raised by user code; training goes on",
    ),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    t = Trainer(tmp_path_factory.mktemp("unsayable") / "run", "--budget", "1")
    yield t
    t.kill()


@pytest.mark.parametrize("now", [False, True], ids=["at a step", "now"])
@pytest.mark.parametrize("case", list(UNSAYABLE))
def test_an_error_whose_description_loops_or_exits_is_answered_within_the_budget_and_training_goes_on(quick, case, now):
    code, error_type, words = UNSAYABLE[case]
    started = time.monotonic()
    resp = quick.call("eval", code=code, now=now)
    took = time.monotonic() - started
    assert resp["status"] == "failed" and resp["error"]["type"] == error_type, resp
    assert words in resp["error"]["message"], resp["error"]
    assert resp["error"]["traceback"].startswith("Traceback (most recent call last):")
    assert resp["error"]["line"] is not None and 'File "<eval' in resp["error"]["traceback"]
    assert took < 8, f"answered after {took:.1f} s (budget 1 s)"
    assert quick.proc.poll() is None, quick.stderr_now()
    assert quick.call("eval", code="6 * 7")["result"] == 42


@pytest.mark.parametrize("case", ["str loops", "name loops", "str exits", "exit's argument loops"])
def test_a_metric_or_rule_whose_error_cannot_be_described_is_disabled_and_training_goes_on(quick, case):
    code, error_type, words = UNSAYABLE[case]
    name = "m_" + "".join(c if c.isalnum() else "_" for c in case)
    first = quick.call("add_metric", name=name, code=code)["result"]["first_error"]
    assert first["type"] == error_type and words in first["message"], first
    assert quick.call("resume_metric", name=name)["status"] == "applied"
    state = quick.wait_for(
        lambda s: s["metrics"][name]["status"] == "disabled", timeout=60, what=f"{name} disabled after 5 errors"
    )
    assert state["metrics"][name]["last_error"]["type"] == error_type
    assert quick.call("add_rule", name=name, code=code, every=1)["status"] == "applied"
    quick.wait_for(lambda s: s["rules"][name]["status"] == "disabled", timeout=60, what=f"rule {name} disabled")
    before = quick.state()["step"]
    quick.wait_for(lambda s: s["step"] > before + 5, what="training goes on")
    assert quick.proc.poll() is None, quick.stderr_now()


LOOPS = "class L:\n    def __repr__(self):\n        while True:\n            pass\n    __str__ = __repr__\n"
SLY_VALUES = {  # what a metric returns is kept and shown outside its budget: no user method may run there
    "text whose slice loops": (
        LOOPS + "class S(str):\n    def __getitem__(self, i):\n        return L()\n",
        "S('hi')",
        "hi",
    ),
    "dict key whose str loops": (
        "class K(str):\n    def __str__(self):\n        while True:\n            pass\n"
        "class H:\n    def __str__(self):\n        return K('k')\n",
        "{H(): 1.5}",
        {"k": 1.5},
    ),
}


@pytest.mark.parametrize("case", list(SLY_VALUES))
def test_a_metric_value_whose_methods_loop_is_shown_as_plain_data_and_training_goes_on(quick, case):
    prelude, value, shown = SLY_VALUES[case]
    name = "v_" + "".join(c if c.isalnum() else "_" for c in case)
    resp = quick.call("add_metric", name=name, code=f"{prelude}return {value}")
    assert resp["status"] == "applied" and resp["result"]["first_value"] == shown, resp
    assert quick.call("resume_metric", name=name)["status"] == "applied"
    before = quick.state()["step"]
    state = quick.wait_for(lambda s: s["step"] > before + 5, what="training and its state go on")
    assert state["metrics"][name]["last_value"] == shown and state["metrics"][name]["error_count"] == 0
    assert quick.call("eval", code=f"{prelude}{value}")["status"] == "applied"  # rendered under the budget
    assert quick.call("remove_metric", name=name)["status"] == "applied"


def test_a_rule_acting_with_a_value_of_its_own_type_whose_methods_loop_acts_with_its_plain_value(quick):
    code = (
        "class L(float):\n    def __repr__(self):\n        while True:\n            pass\n"
        "    __str__ = __repr__\n    __format__ = lambda self, spec: self.__repr__()\n"
        "set(dropout=L(0.25))\npause(type('R', (str,), {'__str__': L.__repr__, '__format__': L.__format__})('why'))"
    )
    assert quick.call("add_rule", name="sly", code=code, every=1)["status"] == "applied"
    state = quick.wait_for(lambda s: s["paused"], timeout=20, what="the rule's pause applied")
    assert state["hparams"]["dropout"]["value"] == 0.25 and state["rules"]["sly"]["fired"] == 1, state["rules"]
    fired = [e for e in quick.mailbox.iter_journal() if e.get("event") == "rule_fired" and e["rule"] == "sly"]
    assert len(fired) == 1 and "dropout" in fired[0]["label"] and "why" in fired[0]["label"], fired
    assert quick.call("remove_rule", name="sly")["status"] == "applied"
    assert quick.call("resume")["status"] == "applied"
    before = quick.state()["step"]
    quick.wait_for(lambda s: s["step"] > before + 5, what="training goes on")

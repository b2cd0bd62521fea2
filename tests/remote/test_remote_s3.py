"""Runs on S3, end to end over a real S3 API (moto's server on loopback): a training process with
`Bridge("s3://...")`, the `bidviz` CLI in other processes, kill -9 and resume, a second bridge refused, the lease
taken over after its expiry."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bidviz import Bridge, protocol
from bidviz.channel import mailbox_for
from bidviz.errors import BridgeBusyError

HERE = Path(__file__).resolve().parent


class Trainer:
    def __init__(self, url: str, env: dict[str, str], ledger: Path | None = None, *extra: str) -> None:
        cmd = [sys.executable, str(HERE / "remote_trainer.py"), url, *extra]
        if ledger is not None:
            cmd += ["--ledger", str(ledger)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True),  # type: ignore[arg-type]
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if line.startswith(("READY", "BUSY")):
                self.ready.set()
        self.ready.set()

    def wait_ready(self) -> str:
        assert self.ready.wait(90), f"no READY: {''.join(self.lines)} {''.join(self.err)}"
        return self.lines[-1] if self.lines else ""

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def cli(env: dict[str, str], *args: str, wait: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidviz", *args], env=env, capture_output=True, text=True, timeout=wait + 60
    )


BUCKET = "bidviz-test"  # made by the s3 fixture


def _url() -> str:
    return f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"


def test_cli_steers_a_run_on_s3_each_command_answered_once(s3: dict[str, str]) -> None:
    logdir = _url()
    run = f"{logdir}/exp"
    trainer = Trainer(run, s3)
    try:
        assert trainer.wait_ready().startswith("READY")
        status = cli(s3, "status", logdir, "--json")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        assert [(r["run"], r["state"]) for r in rows] == [("exp", "live")]

        r = cli(s3, "set", run, "lr=0.01")
        assert r.returncode == 0, r.stderr
        r = cli(s3, "metric", "add", run, "inv", "1 / (step + 1)")
        assert r.returncode == 0, r.stderr
        r = cli(s3, "eval", run, "hparams['lr'] * 2")
        assert r.returncode == 0 and r.stdout.strip() == "0.02", (r.stdout, r.stderr)
        assert cli(s3, "pause", run).returncode == 0
        assert mailbox_for(run).read_state()["paused"] is True  # type: ignore[index]
        assert cli(s3, "resume", run).returncode == 0

        second = Trainer(run, s3)  # a second bridge on the live run: refused, the first goes on
        assert second.wait_ready().startswith("BUSY")
        second.end()

        assert cli(s3, "stop", run).returncode == 0
        assert trainer.proc.wait(60) == 0, "".join(trainer.err)
    finally:
        trainer.end()
    journal = [e for e in mailbox_for(run).iter_journal() if e.get("event") == "command"]
    ids = [e["id"] for e in journal]
    assert len(ids) == len(set(ids)) == 6, journal  # set, metric add, eval, pause, resume, stop: each once
    assert all(e["status"] == "applied" for e in journal)
    assert mailbox_for(run).list_inbox() == []
    assert mailbox_for(run).liveness() == "ended"

    # The events are on the store, and they hold the bridge's series: read back from there, and exported by the CLI.
    from bidviz.writers import read_scalars

    fs = mailbox_for(run).fs
    files = [k for k in fs.ls(f"{BUCKET}/{run.split('/', 3)[3]}", detail=False) if "tfevents" in k]
    assert len(files) == 1
    scalars = read_scalars(run)
    assert scalars["bidviz/inv"], scalars.keys()
    assert [v for _, _, v in scalars["hparams/lr"]][-1] == pytest.approx(0.01)
    assert read_scalars(f"s3://{files[0]}") == scalars  # the event file itself
    r = cli(s3, "export", run, "--tag", "hparams/lr", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert [p["value"] for p in json.loads(r.stdout)["hparams/lr"]] == pytest.approx([0.1, 0.01]), r.stdout
    r = cli(s3, "export", f"{run}-none")
    assert r.returncode == 1 and "holds no event files" in r.stderr, r.stderr


def _send(run: str, kind: str, args: dict[str, Any]) -> str:
    return mailbox_for(run).send(protocol.make_command(kind, args))


def _mark(token: str, then: str = "") -> dict[str, Any]:
    """An eval that appends `token` to the ledger (one O_APPEND write): a command applied twice shows there twice."""
    return {"code": f"open(ledger, 'a').write({token + chr(10)!r})\n{then}{token!r}"}


def _claimed(mailbox: Any) -> set[str]:
    """The ids of the commands claimed on the store (`claims/<inbox name>`)."""
    try:
        keys = mailbox.fs.ls(str(mailbox.claims), detail=False, refresh=True)
    except FileNotFoundError:
        return set()
    return {protocol.id_from_filename(k.rsplit("/", 1)[-1]) for k in keys}


def _check_exactly_once(
    mailbox: Any, sent: dict[str, str], responses: dict[str, dict[str, Any] | None], ledger: Path, kills: int
) -> dict[str, int]:
    """Each eval of `sent` (id -> its ledger token) answered once: `applied` with its token in the ledger exactly
    once, or failed/Interrupted (a kill came after its `applying` line and before its outcome line: it may have
    run, so its token is there at most once, and it was not run again); one journal line per command; a count of
    each."""
    assert all(r is not None for r in responses.values()), [c for c, r in responses.items() if r is None]
    tokens = collections.Counter(ledger.read_text().split()) if ledger.exists() else collections.Counter()
    assert {t: n for t, n in tokens.items() if n > 1} == {}, "an eval ran twice"
    assert set(tokens) <= set(sent.values()), tokens
    counts = collections.Counter()
    for cid, token in sent.items():
        resp = responses[cid]
        assert resp is not None
        if resp["status"] == "applied":
            assert tokens[token] == 1 and resp["result"] == token, (token, resp, tokens)
            counts["applied"] += 1
        else:
            assert resp["status"] == "failed" and resp["error"]["type"] == "Interrupted", resp
            counts["interrupted_after_running" if tokens[token] else "interrupted_unrun"] += 1
    # The `applying` line is written right before each eval runs: a kill cuts short at most one eval (the one
    # running, or the one between its `applying` line and its first statement).
    assert counts["interrupted_after_running"] + counts["interrupted_unrun"] <= kills, counts
    lines = collections.Counter(e["id"] for e in mailbox.iter_journal() if e.get("event") == "command")
    assert all(lines[cid] == 1 for cid in responses), {c: lines[c] for c in responses if lines[c] != 1}
    return counts


def test_kill9_then_resume_loses_nothing_and_applies_nothing_twice(s3: dict[str, str], tmp_path: Path) -> None:
    """kill -9 while evals are in flight (some answered, some applying, some claimed or listed, some not yet seen),
    then commands sent while no bridge runs, then a restart: each command answered once, no eval run twice.

    The kill lands where it lands: an eval that ran but whose outcome the journal had not got yet is answered
    failed/Interrupted (its outcome is unknown, and running it again could do harm), though its token is in the
    ledger. On a store that window is a journal PUT wide, so a kill right after an answer often lands in it."""
    run = f"{_url()}/exp"
    ledger = tmp_path / "ledger"
    trainer = Trainer(run, s3, ledger)
    mailbox = mailbox_for(run)
    sent: dict[str, str] = {}
    try:
        assert trainer.wait_ready().startswith("READY")
        for i in range(6):
            sent[_send(run, "eval", _mark(f"t{i}"))] = f"t{i}"
        assert mailbox.wait_response(list(sent)[2], 30) is not None
        trainer.proc.send_signal(signal.SIGKILL)
        trainer.proc.wait(30)
        for i in range(6, 10):  # sent while no bridge runs: they wait in the inbox
            sent[_send(run, "eval", _mark(f"t{i}"))] = f"t{i}"
        lr = _send(run, "set_hparam", {"name": "lr", "value": 0.5})
        again = Trainer(run, s3, ledger)  # the dead pid's lease, on this host, is taken over at once
        try:
            assert again.wait_ready().startswith("READY"), "".join(again.err)
            responses = {cid: mailbox.wait_response(cid, 30) for cid in [*sent, lr]}
            assert cli(s3, "stop", run).returncode == 0
            assert again.proc.wait(60) == 0
        finally:
            again.end()
    finally:
        trainer.end()
    counts = _check_exactly_once(mailbox, sent, responses, ledger, kills=1)
    assert counts["applied"] >= 9, counts
    assert responses[lr]["status"] == "applied"  # type: ignore[index]
    assert mailbox.list_inbox() == []


def test_kill9_mid_apply_answers_interrupted_and_applies_the_claimed_ones_once(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """The windows of a crash, each made to happen: an eval that has run its effect and is still going (its
    outcome never journaled) when kill -9 comes, evals already claimed and handed to the training thread behind
    it, and evals sent while no bridge runs. The restart answers the first failed/Interrupted and never runs it
    again, and applies every other one exactly once."""
    run = f"{_url()}/exp"
    ledger = tmp_path / "ledger"
    trainer = Trainer(run, s3, ledger, "--hook-budget", "120")
    mailbox = mailbox_for(run)
    try:
        assert trainer.wait_ready().startswith("READY")
        slow = _send(run, "eval", _mark("slow", "import time; time.sleep(90)\n"))
        deadline = time.monotonic() + 60
        while "slow" not in (ledger.read_text() if ledger.exists() else ""):
            assert time.monotonic() < deadline, "the slow eval never ran"
            time.sleep(0.05)
        queued = {_send(run, "eval", _mark(f"q{i}")): f"q{i}" for i in range(3)}
        deadline = time.monotonic() + 30
        while not set(queued) <= _claimed(mailbox):  # claimed and handed off; the training thread is in the slow eval
            assert time.monotonic() < deadline, f"never claimed: {_claimed(mailbox)}"
            time.sleep(0.1)
        assert mailbox.read_response(slow) is None
        trainer.proc.send_signal(signal.SIGKILL)
        trainer.proc.wait(30)
    finally:
        trainer.end()
    assert all(mailbox.read_response(c) is None for c in queued)  # nothing of them was answered
    later = {_send(run, "eval", _mark(f"l{i}")): f"l{i}" for i in range(3)}
    again = Trainer(run, s3, ledger)
    try:
        assert again.wait_ready().startswith("READY"), "".join(again.err)
        sent = {slow: "slow", **queued, **later}
        responses = {cid: mailbox.wait_response(cid, 30) for cid in sent}
        assert cli(s3, "stop", run).returncode == 0
        assert again.proc.wait(60) == 0
    finally:
        again.end()
    counts = _check_exactly_once(mailbox, sent, responses, ledger, kills=1)
    assert responses[slow]["status"] == "failed"  # type: ignore[index]
    assert "not run again" in responses[slow]["error"]["message"]  # type: ignore[index]
    assert counts == {"applied": 6, "interrupted_after_running": 1}, counts
    assert ledger.read_text().split()[0] == "slow" and ledger.read_text().count("slow") == 1
    assert mailbox.list_inbox() == []
    assert _claimed(mailbox) == set()  # every claim left with its command


def test_hostile_objects_in_the_inbox_and_concurrent_senders(s3: dict[str, str], tmp_path: Path) -> None:
    """Whatever lands under the inbox prefix gets one answer and leaves (a prefix with objects under it, a `marker/`
    key, an object over the size limit, one that is not JSON, a name that is not a command
    file's), names starting with a dot are left alone, and 4 senders and the CLI at once are each answered once."""
    run = f"{_url()}/exp"
    ledger = tmp_path / "ledger"
    trainer = Trainer(run, s3, ledger)
    mailbox = mailbox_for(run)
    fs, inbox = mailbox.fs, str(mailbox.inbox)
    try:
        assert trainer.wait_ready().startswith("READY")
        huge, garbage = uuid.uuid4().hex, uuid.uuid4().hex
        nested = f"sub/{protocol.inbox_name(uuid.uuid4().hex)}"
        hostile = {
            protocol.inbox_name(huge): b"{" + b" " * (8 * 1024 * 1024) + b"}",
            protocol.inbox_name(garbage): b"{not json",
            "hello world\u00e9.json": b"{}",
            "x" * 900 + ".json": b"{}",
            nested: protocol.dumps(protocol.make_command("stop", {}).to_dict()),  # a command, but one prefix too deep
            "marker/": b"",
            ".hidden.json": b"{}",
            "..": b"{}",
        }
        for name, data in hostile.items():
            fs.pipe_file(f"{inbox}/{name}", data)

        sent: dict[str, str] = {}
        lock = threading.Lock()

        def sender(who: int) -> None:
            for i in range(10):
                cid = _send(run, "eval", _mark(f"s{who}-{i}"))
                with lock:
                    sent[cid] = f"s{who}-{i}"

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        r = cli(s3, "set", run, "lr=0.25")
        for t in threads:
            t.join()
        assert r.returncode == 0, r.stderr
        responses = {cid: mailbox.wait_response(cid, 30) for cid in sent}
        assert mailbox.wait_response(huge, 30)["error"]["type"] == "TooLarge"  # type: ignore[index]
        assert mailbox.wait_response(garbage, 30)["error"]["type"] == "BadJSON"  # type: ignore[index]

        def left() -> list[str]:
            return sorted(k.rsplit("/", 1)[-1] for k in fs.ls(inbox, detail=False, refresh=True))

        deadline = time.monotonic() + 30
        while left() != [
            "..",
            ".hidden.json",
            ".keep",
        ]:  # the rest answered and gone, the prefixes with what is under them
            assert time.monotonic() < deadline, left()
            time.sleep(0.2)
        assert trainer.proc.poll() is None, "a nested stop command must not stop the run"
        state = mailbox.read_state()
        assert state["watcher_error"] is None and state["record_error"] is None, state  # type: ignore[index]
        assert state["hparams"]["lr"]["value"] == 0.25  # type: ignore[index]
    finally:
        trainer.end()
    _check_exactly_once(mailbox, sent, responses, ledger, kills=0)
    refused = {
        e["error"]["type"]: e["response"]["id"]
        for e in mailbox.iter_journal()
        if e.get("event") == "command" and e["status"] == "rejected"
    }
    assert sorted(refused) == ["BadFileName", "BadJSON", "NotAFile", "TooLarge"], refused
    lines = [e for e in mailbox.iter_journal() if e.get("event") == "command" and e["status"] == "rejected"]
    assert len(lines) == 6, lines  # two names (BadFileName) and two prefixes (NotAFile), one line each


def test_lease_is_taken_over_after_its_expiry_and_the_old_bridge_stops_taking_commands(s3: dict[str, str]) -> None:
    run = f"{_url()}/exp"
    env = {**s3, "BIDVIZ_LEASE_SECONDS": "4"}
    first = Trainer(run, env)
    second = None
    try:
        assert first.wait_ready().startswith("READY")
        first.proc.send_signal(signal.SIGSTOP)  # alive but frozen: its pid lives, its lease stops being renewed
        frozen_at = time.monotonic()
        with pytest.raises(BridgeBusyError, match="lease expires in"):  # not yet expired
            Bridge(run)
        time.sleep(max(0.0, 4.5 - (time.monotonic() - frozen_at)))
        second = Trainer(run, env)
        assert second.wait_ready().startswith("READY"), (second.lines, second.err)
        first.proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)  # the first renews, finds the lease taken, and stops admitting
        ids = [_send(run, "set_hparam", {"name": "lr", "value": 0.2 + i / 100}) for i in range(5)]
        mailbox = mailbox_for(run)
        responses = [mailbox.wait_response(cid, 30) for cid in ids]
        assert all(r is not None and r["status"] == "applied" for r in responses), responses
        assert mailbox.read_state()["pid"] == second.proc.pid  # type: ignore[index]
        commands = [e["id"] for e in mailbox.iter_journal() if e.get("event") == "command"]
        assert sorted(commands) == sorted(ids)
        owner = json.loads(mailbox.fs.cat_file(str(mailbox.owner_path)))
        assert owner["pid"] == second.proc.pid
    finally:
        first.proc.send_signal(signal.SIGCONT)
        first.end()
        if second is not None:
            second.end()


def test_a_frozen_owner_whose_lease_was_taken_applies_and_answers_nothing_when_it_wakes(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """The first bridge is frozen (SIGSTOP) in the middle of an eval, with another command claimed and handed to its
    training thread. Past its lease a second bridge takes the run over: it answers the first eval Interrupted and
    applies the claimed one. When the first wakes it finishes the eval it was in, then applies nothing more, and
    writes no answer, journal line or state over the second's: each command has one answer, each eval ran once."""
    run = f"{_url()}/exp"
    ledger = tmp_path / "ledger"
    env = {**s3, "BIDVIZ_LEASE_SECONDS": "4"}
    first = Trainer(run, env, ledger, "--hook-budget", "120")
    mailbox = mailbox_for(run)
    second = None
    try:
        assert first.wait_ready().startswith("READY")
        slow = _send(run, "eval", _mark("slow", "import time; time.sleep(3)\n"))
        deadline = time.monotonic() + 60
        while "slow" not in (ledger.read_text() if ledger.exists() else ""):
            assert time.monotonic() < deadline, "the slow eval never ran"
            time.sleep(0.02)
        queued = _send(run, "eval", _mark("queued"))
        while queued not in _claimed(mailbox):
            assert time.monotonic() < deadline, "never claimed"
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGSTOP)
        time.sleep(4.5)  # its lease expires
        second = Trainer(run, env, ledger)
        assert second.wait_ready().startswith("READY"), (second.lines, second.err)
        assert mailbox.wait_response(slow, 30)["error"]["type"] == "Interrupted"  # type: ignore[index]
        assert mailbox.wait_response(queued, 30)["status"] == "applied"  # type: ignore[index]
        first.proc.send_signal(signal.SIGCONT)
        time.sleep(5)  # it finishes the slow eval, and would apply `queued` and answer both now
        later = _send(run, "eval", _mark("later"))
        assert mailbox.wait_response(later, 30)["status"] == "applied"  # type: ignore[index]
        assert mailbox.read_state()["pid"] == second.proc.pid  # type: ignore[index]
        assert mailbox.read_response(slow)["error"]["type"] == "Interrupted"  # type: ignore[index]
    finally:
        first.proc.send_signal(signal.SIGCONT)
        first.end()
        if second is not None:
            second.end()
    tokens = collections.Counter(ledger.read_text().split())
    assert tokens == {"slow": 1, "queued": 1, "later": 1}, tokens
    lines = collections.Counter(e["id"] for e in mailbox.iter_journal() if e.get("event") == "command")
    assert lines == {slow: 1, queued: 1, later: 1}, lines

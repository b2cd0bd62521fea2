"""The CLI against mailboxes it cannot trust: corrupt or unreadable files, forged responses with terminal escapes,
a symlinked or foreign `.bidviz`, read-only and full file systems. Every case ends in one clear line and the
documented exit status, never a traceback, and nothing is written where it must not be."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bidviz.channel import Mailbox

Cli = Callable[..., subprocess.CompletedProcess[str]]

ESCAPE = "\x1b]0;pwned\x07"  # OSC 0: would retitle the terminal
CSI = "\x1b[2J"  # would clear the screen


def _assert_clean(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    assert "Traceback (most recent call last)" not in text, text  # the CLI's own: it must never crash


def _forge_responses(mailbox: Mailbox, body: Callable[[str], bytes]) -> Iterator[threading.Thread]:
    """A fake bridge: answers every command that lands in the inbox with `body(id)` (raw bytes, as an attacker
    who can write the outbox would), until the test ends."""
    stop = threading.Event()

    def run() -> None:
        answered: set[str] = set()
        while not stop.is_set():
            for name in os.listdir(mailbox.inbox):
                command_id = name.rsplit("-", 1)[-1].removesuffix(".json")
                if command_id not in answered:
                    answered.add(command_id)
                    (mailbox.outbox / f"{command_id}.json").write_bytes(body(command_id))
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join(5)


@pytest.fixture
def mailbox(tmp_path: Path) -> Mailbox:
    box = Mailbox(tmp_path / "run")
    box.create()
    return box


@pytest.fixture
def forge(mailbox: Mailbox) -> Iterator[Callable[[Callable[[str], bytes]], None]]:
    threads: list[Iterator[threading.Thread]] = []

    def start(body: Callable[[str], bytes]) -> None:
        gen = _forge_responses(mailbox, body)
        next(gen)
        threads.append(gen)

    yield start
    for gen in threads:
        next(gen, None)


# -- corrupt and unreadable files -------------------------------------------------------------------------------


def test_a_corrupt_state_json_is_reported_not_taken_for_a_missing_one(cli: Cli, mailbox: Mailbox) -> None:
    run = mailbox.run_dir
    mailbox.state_path.write_text('{"step": 3, "metrics": {')  # cut short: not JSON
    for args in (["metric", "ls", run], ["metric", "export", run, "-"]):
        out = cli(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert str(mailbox.state_path) in out.stderr and "corrupt" in out.stderr, out.stderr
        assert "no state.json yet" not in out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    mailbox.state_path.write_text("[1, 2]")
    out = cli("metric", "ls", run)
    assert out.returncode == 1 and "not an object" in out.stderr

    out = cli("status", run.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:2] == ["run", "unreadable"]
    assert f"run: {mailbox.state_path}" in out.stderr and "not an object" in out.stderr
    (row,) = json.loads(cli("status", run.parent, "--json").stdout)
    assert row["state"] == "unreadable" and "not an object" in row["problem"]


def test_a_directory_in_place_of_state_json_or_the_journal_is_unreadable(cli: Cli, mailbox: Mailbox) -> None:
    run = mailbox.run_dir
    mailbox.state_path.mkdir()
    out = cli("metric", "ls", run)
    assert out.returncode == 1 and "is a directory" in out.stderr and str(mailbox.state_path) in out.stderr
    (row,) = json.loads(cli("status", run.parent, "--json").stdout)
    assert row["state"] == "unreadable" and "is a directory" in row["problem"]
    # Sending still works; why no answer came says the state cannot be read.
    out = cli("pause", run, "--wait", "0.2")
    assert out.returncode == 3 and "state cannot be read" in out.stderr, out.stderr

    mailbox.journal_path.mkdir()
    out = cli("journal", run)
    assert out.returncode == 1 and "is a directory" in out.stderr and str(mailbox.journal_path) in out.stderr
    assert "Traceback" not in out.stderr


def test_a_corrupt_response_fails_at_once_instead_of_waiting_for_the_timeout(
    cli: Cli, mailbox: Mailbox, forge: Any
) -> None:
    forge(lambda command_id: b'{"v": 1, "id": "' + command_id.encode() + b'", "status": "appl')
    started = time.monotonic()
    out = cli("eval", mailbox.run_dir, "1 + 1", "--wait", "60")
    assert time.monotonic() - started < 30
    assert out.returncode == 1, out.stderr
    assert "corrupt" in out.stderr and str(mailbox.outbox) in out.stderr
    assert "Traceback" not in out.stderr


# -- forged responses, journal and state with terminal escapes --------------------------------------------------


def test_escapes_in_a_forged_response_never_reach_the_terminal(cli: Cli, mailbox: Mailbox, forge: Any) -> None:
    def failed(command_id: str) -> bytes:
        error = {"type": f"Boom{ESCAPE}", "message": f"bad{ESCAPE}{CSI}", "traceback": f"Trace{ESCAPE}\nline 2"}
        return json.dumps({"v": 1, "id": command_id, "kind": "eval", "status": "failed", "error": error}).encode()

    forge(failed)
    out = cli("eval", mailbox.run_dir, "1")
    assert out.returncode == 1
    _assert_clean(out.stdout + out.stderr)
    assert "bad" in out.stderr and "line 2" in out.stderr and "pwned" in out.stderr  # shown, but defused


def test_escapes_in_an_applied_repr_and_result_are_stripped(cli: Cli, mailbox: Mailbox, forge: Any) -> None:
    def applied(command_id: str) -> bytes:
        response = {
            "v": 1,
            "id": command_id,
            "kind": "set_hparam",
            "status": "applied",
            "step": f"7{CSI}",
            "repr": f"'{ESCAPE}'",
            "result": {"name": f"lr{ESCAPE}", "value": 0.5, "old": 0.1},
        }
        return json.dumps(response).encode()

    forge(applied)
    for args in (["eval", mailbox.run_dir, "1"], ["set", mailbox.run_dir, "lr=0.5"]):
        out = cli(*args)
        assert out.returncode == 0, out.stderr
        _assert_clean(out.stdout + out.stderr)
        assert "pwned" in out.stdout


def test_escapes_in_journal_state_and_run_names_are_stripped(cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / f"run{CSI}"
    mailbox = Mailbox(run)
    mailbox.create()
    mailbox.append_journal(
        {
            "time": time.time(),
            "step": 1,
            "event": "command",
            "kind": "eval",
            "args": {"code": f"x{ESCAPE}"},
            "sender": f"cli:{ESCAPE}",
            "status": "failed",
            "error": {"type": "E", "message": f"m{ESCAPE}"},
        }
    )
    mailbox.append_journal({"time": time.time(), "step": 2, "event": "command", "label": f"set{ESCAPE}"})
    mailbox.append_journal({"time": 1e300, "step": 3, "event": f"metric_error{ESCAPE}", "metric": f"m{CSI}"})
    mailbox.write_state(
        {
            "pid": 1,
            "host": f"h{ESCAPE}",
            "heartbeat": "soon",
            "step": f"{CSI}",
            "metrics": {f"m{ESCAPE}": {"code": f"c{CSI}", "status": f"s{ESCAPE}", "last_error": f"e{ESCAPE}"}},
        }
    )
    for args in (["journal", run], ["metric", "ls", run], ["status", tmp_path], ["pause", run, "--wait", "0.1"]):
        out = cli(*args)
        assert out.returncode in (0, 3), (args, out.stderr)
        _assert_clean(out.stdout + out.stderr)
    assert "????-??-??" in cli("journal", run).stdout  # a time out of range shows as unknown, not a crash


# -- a mailbox that is not the user's own -----------------------------------------------------------------------


def test_a_symlinked_mailbox_is_refused_and_nothing_is_written_there(cli: Cli, tmp_path: Path) -> None:
    victim = Mailbox(tmp_path / "victim")
    victim.create()
    victim.write_state({"pid": 1, "heartbeat": time.time(), "metrics": {"secret": {"code": "1"}}})
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / ".bidviz").symlink_to(victim.root)
    for args in (
        ["stop", trap, "--wait", "0.2"],
        ["set", trap, "lr=1", "--no-wait"],
        ["metric", "ls", trap],
        ["journal", trap],
        ["metric", "export", trap, "-"],
    ):
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "symlink" in out.stderr and "secret" not in out.stdout, out.stderr
    assert list(victim.inbox.iterdir()) == []
    (row,) = [r for r in json.loads(cli("status", tmp_path, "--json").stdout) if r["run"] == "trap"]
    assert row["state"] == "unreadable" and "symlink" in row["problem"]


def test_a_symlinked_inbox_inside_the_mailbox_is_refused(cli: Cli, tmp_path: Path) -> None:
    victim = Mailbox(tmp_path / "victim")
    victim.create()
    mailbox = Mailbox(tmp_path / "run")
    mailbox.create()
    mailbox.inbox.rmdir()
    mailbox.inbox.symlink_to(victim.inbox)
    out = cli("stop", mailbox.run_dir, "--wait", "0.2")
    assert out.returncode == 2 and "symlink" in out.stderr
    assert list(victim.inbox.iterdir()) == []


def test_a_mailbox_writable_by_others_is_refused(cli: Cli, mailbox: Mailbox) -> None:
    os.chmod(mailbox.root, 0o777)
    out = cli("stop", mailbox.run_dir, "--wait", "0.2")
    assert out.returncode == 2 and "writable by other users" in out.stderr and "chmod 700" in out.stderr
    assert list(mailbox.inbox.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="giving the mailbox to another user needs root (CI runs as root)")
def test_a_mailbox_of_another_user_is_refused(cli: Cli, mailbox: Mailbox) -> None:
    os.chown(mailbox.root, 65534, 65534)
    try:
        for args in (["stop", mailbox.run_dir, "--wait", "0.2"], ["journal", mailbox.run_dir]):
            out = cli(*args)
            assert out.returncode == 2, (args, out.stderr)
            assert "belongs to uid 65534" in out.stderr, out.stderr
        assert list(mailbox.inbox.iterdir()) == []
    finally:
        os.chown(mailbox.root, 0, 0)


# -- read-only and full file systems ----------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_a_read_only_mailbox_is_one_line_with_what_to_do(cli: Cli, mailbox: Mailbox) -> None:
    root = str(mailbox.root)
    if os.getuid() != 0 or not _mount("--bind", root, root):
        pytest.skip("needs a read-only bind mount (root with mount rights)")
    try:
        if not _mount("-o", "remount,bind,ro", root):
            pytest.skip("cannot remount read-only here")
        out = cli("pause", mailbox.run_dir, "--wait", "0.2")
    finally:
        subprocess.run(["umount", root], capture_output=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: cannot write into ") and "read-only" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert list(mailbox.inbox.iterdir()) == []


def test_a_full_disk_is_one_line_with_what_to_do(mailbox: Mailbox) -> None:
    def no_file_space() -> None:  # every write fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    out = subprocess.run(
        [sys.executable, "-m", "bidviz", "pause", str(mailbox.run_dir), "--wait", "0.2"],
        capture_output=True,
        text=True,
        preexec_fn=no_file_space,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "cannot write into" in out.stderr and "free some space" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert list(mailbox.inbox.iterdir()) == [] and list(mailbox.tmp.iterdir()) == []

"""Commands never outlive their sender's patience: a real training process, the real CLI.

A command carries `expires_at` (the sender's --wait by default); a sender that gives up withdraws it, and the
bridge's claim and the withdrawal exclude each other, so a command is applied or withdrawn/expired, never both.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bidviz.channel import Mailbox
from bidviz.cli.parser import main

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartTraining = Callable[..., Any]

RACES = 40


def _journal(run: Path) -> list[dict[str, Any]]:
    return list(Mailbox(run).iter_journal())


def test_a_sender_that_gives_up_while_the_bridge_claims_gets_applied_or_withdrawn_never_both(
    start_training: StartTraining, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "race"
    training = start_training(run)
    assert main(["eval", str(run), "seen = []"]) == 0
    capsys.readouterr()
    outcome: dict[int, tuple[int, dict[str, Any]]] = {}
    for i in range(RACES):
        # A wait of a few ms: the sender withdraws just as the mailroom, woken by inotify, claims (or finds the
        # command expired: a wait is also the command's expiry).
        wait = f"{(i % 8) * 0.005:g}"
        code = main(["eval", str(run), f"seen.append({i})", "--wait", wait, "--json"])
        outcome[i] = (code, json.loads(capsys.readouterr().out))
    withdrawn = {i for i, (code, r) in outcome.items() if r["status"] == "withdrawn"}
    applied = {i for i, (code, r) in outcome.items() if r["status"] == "applied"}
    claimed = {i for i, (code, r) in outcome.items() if r["status"] == "claimed"}
    expired = {i for i, (code, r) in outcome.items() if (r.get("error") or {}).get("type") == "Expired"}
    assert withdrawn | applied | claimed | expired == set(range(RACES)), outcome
    assert all(outcome[i][0] == 0 for i in applied), outcome
    assert all(outcome[i][0] == 3 for i in withdrawn | claimed) and all(outcome[i][0] == 1 for i in expired)

    time.sleep(1.5)  # a claimed command is answered at the bridge's next step
    assert main(["eval", str(run), "seen", "--now", "--json"]) == 0
    seen = json.loads(capsys.readouterr().out)["result"]
    assert len(seen) == len(set(seen)), f"a command ran twice: {seen}"
    sides = (sorted(withdrawn), sorted(expired), sorted(applied), sorted(claimed), seen)
    assert applied <= set(seen) <= applied | claimed, sides
    assert withdrawn and applied, f"one side of the race was never seen: {outcome}"
    ids = {r["id"] for _, r in outcome.values()}
    answers = [e for e in _journal(run) if e.get("event") == "command" and e.get("id") in ids]
    assert sorted(e["id"] for e in answers) == sorted(r["id"] for i, (_, r) in outcome.items() if i not in withdrawn)
    # A command its sender saw claimed as it gave up is answered: applied, or Expired when the bridge read it past
    # its expiry (the sender's grace to hear that is short; on a loaded machine the answer may come after it).
    by_id = {e["id"]: e for e in answers}
    for i in claimed - set(seen):
        assert (by_id[outcome[i][1]["id"]]["error"] or {}).get("type") == "Expired", by_id[outcome[i][1]["id"]]
    assert not list(Mailbox(run).inbox.iterdir())
    assert not [p.name for p in Mailbox(run).tmp.iterdir() if p.name.startswith(("claim-", "withdrawn-"))]
    assert main(["stop", str(run)]) == 0
    assert training.wait_exit(60) == 0, training.output()


def test_an_ended_run_refuses_at_once_and_a_restarted_run_answers_expired_commands_without_applying_them(
    cli: Cli, start_training: StartTraining, tmp_path: Path, state: Callable[[Path], dict[str, Any]]
) -> None:
    run = tmp_path / "ended"
    training = start_training(run)
    assert cli("stop", run).returncode == 0
    assert training.wait_exit(60) == 0, training.output()
    inbox = Mailbox(run).inbox

    started = time.monotonic()
    out = cli("stop", run)
    assert out.returncode == 1 and time.monotonic() - started < 10, out.stderr
    assert "nothing was sent" in out.stderr and "has ended" in out.stderr and "--queue" in out.stderr
    assert not list(inbox.iterdir())

    # Queued on purpose: one that expires first (a stop), one that never does (a set).
    out = cli("stop", run, "--expires", "1s", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "sent", out.stderr
    expired_id = json.loads(out.stdout)["id"]
    out = cli("set", run, "dropout=0.4", "--queue", "--json")
    assert out.returncode == 0, out.stderr
    (sent,) = json.loads(out.stdout)  # set prints a list
    queued_id = sent["id"]
    assert len(list(inbox.iterdir())) == 2
    time.sleep(1.2)

    restarted = start_training(run)
    outbox = Mailbox(run).outbox
    deadline = time.monotonic() + 30
    while not all((outbox / f"{i}.json").exists() for i in (expired_id, queued_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    expired = json.loads((outbox / f"{expired_id}.json").read_text())
    assert expired["status"] == "rejected" and expired["error"]["type"] == "Expired"
    assert json.loads((outbox / f"{queued_id}.json").read_text())["status"] == "applied"
    time.sleep(0.5)
    assert restarted.proc.poll() is None, "the expired stop stopped the restarted run"
    assert state(run)["hparams"]["dropout"]["value"] == 0.4
    (line,) = [e for e in _journal(run) if e.get("id") == expired_id]
    assert line["status"] == "rejected" and line["error"]["type"] == "Expired"
    assert cli("stop", run).returncode == 0
    assert restarted.wait_exit(60) == 0, restarted.output()


def test_a_command_to_a_live_bridge_carries_the_senders_patience_as_its_expiry(tmp_path: Path) -> None:
    from bidviz.cli.parser import build_parser
    from bidviz.cli.sending import expires_in

    parse = build_parser().parse_args
    assert expires_in(parse(["stop", "r"])) == 30.0
    assert expires_in(parse(["stop", "r", "--wait", "5"])) == 5.0
    assert expires_in(parse(["stop", "r", "--no-wait"])) == 30.0
    assert expires_in(parse(["stop", "r", "--expires", "1h"])) == 3600.0
    assert expires_in(parse(["stop", "r", "--expires", "90"])) == 90.0
    assert expires_in(parse(["stop", "r", "--queue"])) is None
    for bad in (["--expires", "0"], ["--expires", "1y"], ["--expires", "nan"], ["--queue", "--expires", "1h"]):
        with pytest.raises(SystemExit):
            parse(["stop", "r", *bad])

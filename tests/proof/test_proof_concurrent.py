"""Part 3: four sending processes at once, each with its own clock, each a numbered sequence of evals that append
(sender, n) to a list in the trainer's namespace (one sender's evals run `now`, in the mailroom thread). Every
sender's order is kept (no inversions), nothing is lost, nothing runs twice."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

from proof_helpers import Figures, JournalReader, Trainer, dump_list, pick, report, wait_responses

SENDER = Path(__file__).with_name("proof_sender.py")
COUNT = pick(60, 3000)  # evals per sender; a listing taken while thousands queue up may miss some (see mailroom)
SENDERS = {"a": False, "b": False, "c": False, "d": True}  # name -> its evals run now


def test_four_senders_keep_their_order_and_lose_nothing(start_trainer, tmp_path: Path) -> None:
    figures = Figures("concurrent", notes={"senders": len(SENDERS), "per_sender": COUNT})
    started = time.monotonic()
    t: Trainer = start_trainer()
    step = t.wait_step_past(None)
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SENDER), str(t.run_dir), name, str(COUNT), *(["--now"] if now else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, now in SENDERS.items()
    }
    ids: dict[str, list[str]] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=pick(120, 600))
        assert proc.returncode == 0, f"sender {name} failed"
        ids[name] = json.loads(out)
    every = [cid for sent in ids.values() for cid in sent]
    got = wait_responses(t.mailbox, every, pick(60, 300))
    journal = JournalReader(t.mailbox)
    journal.new_entries()
    seen = [tuple(x) for x in dump_list(t.mailbox, "seen", tmp_path / "seen.json")]
    counts = collections.Counter(seen)
    inversions = 0
    for name in SENDERS:
        ns = [n for who, n in seen if who == name]
        inversions += sum(1 for x, y in zip(ns, ns[1:], strict=False) if y < x)
    figures.tried, figures.answered, figures.lost = len(every), len(got), len(every) - len(got)
    figures.double = sum(1 for n in counts.values() if n > 1) + sum(1 for c in every if journal.commands[c] > 1)
    figures.crashed = 0 if t.alive() else 1
    figures.notes["inversions"] = inversions
    figures.seconds = time.monotonic() - started
    report(figures)

    assert len(got) == len(every), f"{len(every) - len(got)} commands got no response"
    assert all(r["status"] == "applied" for r in got.values()), [r for r in got.values() if r["status"] != "applied"]
    assert all(journal.commands[c] == 1 for c in every)
    assert not [k for k, n in counts.items() if n > 1], "an eval ran twice"
    for name in SENDERS:
        assert [n for who, n in seen if who == name] == list(range(COUNT)), f"sender {name}: order or loss"
    t.wait_step_past(step)

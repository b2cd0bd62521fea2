"""Part 2: kill -9 at random moments while a stream of commands arrives: non-idempotent evals (each appends its own
token to a marker file, with one O_APPEND write, then sleeps a little so a kill often lands mid-apply; one in five
runs `now`, in the mailroom thread) and set_hparam commands (idempotent: re-applied after a crash).

At the end: no token ran twice, every command has exactly one response (applied, or failed/Interrupted when a
kill cut it mid-apply) and one journal line, none is lost, and lr is the last value sent, also after one more
restart; a copy of an answered command delivered again after the restarts is not run again.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from pathlib import Path

from proof_helpers import Figures, JournalReader, Trainer, pick, report, send, wait_inbox_empty, wait_responses

from bidviz import protocol
from bidviz.channel import Mailbox

CYCLES = pick(5, 30)
SEED = int(os.environ.get("BIDVIZ_PROOF_SEED", time.time_ns() % 1_000_000))


class Stream(threading.Thread):
    """Sends commands every ~15 ms, whether a trainer runs or not (as clients do)."""

    def __init__(self, run_dir: Path, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.mailbox = Mailbox(run_dir)
        self.rng = rng
        self.sent: list[tuple[str, str, object]] = []  # (id, kind, token or value), in sending order
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            if self.rng.random() < 0.25:
                value = round(self.rng.uniform(0.001, 1.0), 6)
                cid = send(self.mailbox, "set_hparam", {"name": "lr", "value": value})
                self.sent.append((cid, "set_hparam", value))
            else:
                token = f"tok{n}"
                code = f"mark({token!r})\ntime.sleep({self.rng.uniform(0, 0.04):.3f})\n{token!r}"
                now = self.rng.random() < 0.2  # run at once in the mailroom thread, not at a step boundary
                cid = send(self.mailbox, "eval", {"code": code, "now": now})
                self.sent.append((cid, "eval", token))
            time.sleep(0.015)


def test_kill_9_cycles_never_run_a_command_twice_nor_lose_one(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    figures = Figures("kill-9", notes={"cycles": CYCLES, "seed": SEED})
    started = time.monotonic()
    run_dir, marker = tmp_path / "run", tmp_path / "marker.txt"
    env = {"PROOF_MARKER": str(marker)}
    first = Trainer(run_dir, env=env)
    stream = Stream(run_dir, rng)
    stream.start()
    kills_mid_start, early = 0, False
    try:
        t = first
        for cycle in range(CYCLES):
            if cycle:
                early = rng.random() < 0.2  # now and then while it starts: replaying, answering Interrupted
                t = Trainer(run_dir, env=env, wait_ready=not early)
                kills_mid_start += early
            time.sleep(rng.uniform(0.0, 0.4) if cycle and early else rng.uniform(0.05, 1.2))
            if not t.alive():
                figures.crashed += 1
                raise AssertionError(f"the trainer died on its own (exit {t.proc.returncode}): {t.stderr()}")
            t.kill9()
            time.sleep(rng.uniform(0.0, 0.3))  # commands keep coming while no trainer runs
    finally:
        stream.halt.set()
        stream.join(10)
    last = Trainer(run_dir, env=env)
    try:
        sent = stream.sent
        ids = [cid for cid, _, _ in sent]
        got = wait_responses(last.mailbox, ids, pick(60, 180))
        journal = JournalReader(last.mailbox)
        journal.new_entries()
        tokens = collections.Counter(marker.read_text().split()) if marker.exists() else collections.Counter()
        figures.tried, figures.answered, figures.lost = len(ids), len(got), len(ids) - len(got)
        figures.double = sum(1 for n in tokens.values() if n > 1) + sum(1 for c in ids if journal.commands[c] > 1)
        statuses = collections.Counter(
            "interrupted"
            if r["status"] == "failed" and (r["error"] or {}).get("type") == "Interrupted"
            else r["status"]
            for r in got.values()
        )
        figures.notes.update(
            {
                "applied": statuses["applied"],
                "interrupted": statuses["interrupted"],
                "interrupted_after_running": sum(
                    1 for c, k, w in sent if k == "eval" and c in got and got[c]["status"] == "failed" and tokens[w]
                ),
                "kills_while_starting": kills_mid_start,
            }
        )

        assert not figures.lost, f"lost: {[s for s in sent if s[0] not in got][:5]}"
        assert {t: n for t, n in tokens.items() if n > 1} == {}, "an eval ran twice"
        assert all(journal.commands[c] == 1 for c in ids), "a command has not exactly one journal line"
        for cid, kind, what in sent:
            resp = got[cid]
            if kind == "set_hparam":
                assert resp["status"] == "applied", resp  # idempotent: re-applied after a crash, never Interrupted
            elif resp["status"] == "applied":
                assert tokens[what] == 1 and resp["result"] == what, (resp, tokens[what])
            else:
                assert resp["status"] == "failed" and resp["error"]["type"] == "Interrupted", resp
                assert tokens[what] <= 1
        assert set(tokens) <= {what for _, kind, what in sent if kind == "eval"}
        # The write-ahead line is written right before each eval, so at most one eval a kill is Interrupted without
        # having run (the one between its `applying` line and its token); an eval that ran but whose outcome was not
        # journaled yet is Interrupted too, which is right: its outcome is unknown, and it must not run again.
        not_run = figures.notes["interrupted"] - figures.notes["interrupted_after_running"]
        assert not_run <= CYCLES, f"{not_run} evals answered Interrupted without having run, for {CYCLES} kills"
        assert wait_inbox_empty(last.mailbox) == []

        lr = [what for _, kind, what in sent if kind == "set_hparam"][-1]
        last.wait_step_past(None)
        assert last.hparam("lr") == lr
        assert last.stop() == 0
        again = Trainer(run_dir, env=env)
        assert again.hparam("lr") == lr, "the last value, restored from the journal"

        # A copy of an applied eval delivered again (a sync tool, a client's retry) is answered, never re-run.
        cid, _, token = next(s for s in sent if s[1] == "eval" and got[s[0]]["status"] == "applied")
        copy = protocol.make_command("eval", {"code": f"mark({token!r})"}, command_id=cid)
        again.mailbox.send(copy)
        assert wait_inbox_empty(again.mailbox) == []
        again.wait_step_past(again.wait_step_past(None))
        assert collections.Counter(marker.read_text().split())[token] == 1, "a copy re-ran an answered command"
        again.kill9()
    finally:
        last.kill9()
        figures.seconds = time.monotonic() - started
        report(figures)

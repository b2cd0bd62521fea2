"""Part 1: hostile command files, in batches, into the inbox of a live trainer (a signing bridge).

For every entry: exactly one response (a badly named file's id is `protocol.id_from_filename(name)`), one command
line in the journal, never applied twice; training goes on (its step keeps increasing, the process lives) and
the inbox ends empty. At the end, a kill -9 and a restart on that journal restore the same values.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from proof_cases import SECRET, Case, cases, duplicate
from proof_helpers import (
    Figures,
    JournalReader,
    Trainer,
    dump_list,
    pick,
    report,
    wait_inbox_empty,
    wait_responses,
)

from bidviz import protocol

BATCHES = pick(16, 440)
BATCH = pick((15, 35), (25, 40))  # entries per batch; long mode: 440 batches of at least 25 -> 11,000 and more
MIN_CASES = pick(200, 10_000)
ANSWER_SECONDS = 30.0


class Fuzz:
    def __init__(self, trainer: Trainer, scratch: Path) -> None:
        self.trainer = trainer
        self.mailbox = trainer.mailbox
        self.scratch = scratch
        self.journal = JournalReader(self.mailbox)
        self.figures = Figures("fuzz-files")
        self.sent_ids: list[str] = []  # well-named ids sent so far, for duplicates across batches
        self.sent_set: set[str] = set()
        self.marks: collections.Counter[str] = collections.Counter()  # ids whose eval appends, and how often sent
        self.expect_applied: set[str] = set()
        self.started = time.monotonic()
        self.outside = scratch / "outside.json"  # a valid command outside the inbox, for symlinks to point at
        cid = uuid.uuid4().hex
        self.outside.write_text(f'{{"v": 1, "id": "{cid}", "kind": "eval", "args": {{"code": "1"}}}}')

    def create(self, case: Case) -> bool:
        """Put `case` into the inbox; False when its name cannot be made (it is then not counted)."""
        path = os.path.join(os.fsencode(self.mailbox.inbox), case.name)
        try:
            if case.shape in ("file", "foreign"):
                tmp = os.path.join(os.fsencode(self.mailbox.tmp), b"fuzz-" + uuid.uuid4().hex.encode() + b".tmp")
                with open(tmp, "wb") as f:
                    f.write(case.data)
                if case.shape == "foreign":
                    os.chown(tmp, 65534, 65534)
                os.rename(tmp, path)
            elif case.shape == "direct":
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, case.data[: len(case.data) // 2])
                    time.sleep(0.002)
                    os.write(fd, case.data[len(case.data) // 2 :])
                finally:
                    os.close(fd)
            elif case.shape == "dir":
                os.mkdir(path)
                if len(case.name) % 2:
                    with open(os.path.join(path, b"inside.json"), "wb") as f:
                        f.write(case.data)
            elif case.shape == "symlink":
                targets = [bytes(self.outside), b"/nonexistent/x.json", b"/dev/zero", os.fsencode(self.scratch)]
                os.symlink(targets[len(case.name) % len(targets)], path)
            elif case.shape == "fifo":
                os.mkfifo(path)
            else:
                raise AssertionError(f"unknown shape {case.shape}")
        except OSError:  # a name the file system refuses (too long, taken by the previous entry of this batch)
            self.figures.notes["not_made"] = self.figures.notes.get("not_made", 0) + 1
            return False
        return True

    def run(self, batch: list[Case], extra: list[tuple[int, int]]) -> None:
        t, figures = self.trainer, self.figures
        step0 = t.wait_step_past(None)
        chosen: dict[bytes, Case] = {}
        for case in batch:
            chosen.setdefault(case.name, case)
        for index, offset in extra:  # second files with an id sent before, in this batch or an earlier one
            pool = [c.rid for c in chosen.values() if protocol.is_command_filename(os.fsdecode(c.name))]
            pool += self.sent_ids[-200:]
            if pool:
                cid = pool[index % len(pool)]
                dup = duplicate(cid, offset)
                chosen.setdefault(dup.name, dup)
        per_id = collections.Counter(c.rid for c in chosen.values())
        for name, c in list(chosen.items()):  # two files, one id: whichever is taken first answers for both
            if per_id[c.rid] > 1 or c.rid in self.sent_set:
                chosen[name] = Case(c.name, c.shape, c.data, None, c.marks, c.why + " (id sent twice)")
        made = [c for c in chosen.values() if self.create(c)]
        rids = {c.rid for c in made}
        figures.tried += len(made)
        for c in made:
            if c.marks:
                self.marks[c.marks] += 1
            if c.expect == frozenset({"applied"}) and c.marks:
                self.expect_applied.add(c.marks)
        # An id answered in an earlier batch gets no second answer: its one response may be pruned long since.
        earlier = rids & self.sent_set
        got = wait_responses(self.mailbox, rids - earlier, ANSWER_SECONDS)
        left = wait_inbox_empty(self.mailbox)
        self.journal.new_entries()
        lost = [c for c in made if c.rid not in got and c.rid not in earlier]
        figures.answered += len(made) - len(lost)
        figures.lost += len(lost)
        twice = {r: self.journal.commands[r] for r in rids if self.journal.commands[r] > 1}
        figures.double += len(twice)
        if not t.alive():
            figures.crashed += 1
        assert not lost, f"{len(lost)} entries got no response within {ANSWER_SECONDS}s: {lost[:3]}"
        assert not twice, f"answered more than once: {twice}: {[c for c in made if c.rid in twice]}"
        missing = [r for r in rids if self.journal.commands[r] != 1]
        assert not missing, f"no command line in the journal for {missing[:5]}"
        for c in made:
            resp = got.get(c.rid)
            if resp is None:
                continue  # answered in an earlier batch
            assert resp["id"] == c.rid and resp["v"] == 1 and resp["status"] in protocol.STATUSES, (c, resp)
            if c.expect is not None:
                assert resp["status"] in c.expect, f"{c.why}: expected {set(c.expect)}, got {resp}"
        assert left == [], f"the inbox keeps {left[:5]}: {[c for c in made if os.fsdecode(c.name) in left]}"
        t.wait_step_past(step0, timeout=10)
        self.sent_ids += [c.rid for c in made if protocol.is_command_filename(os.fsdecode(c.name))]
        self.sent_set.update(c.rid for c in made)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    trainer = Trainer(root / "run", env={"BIDVIZ_SECRET": SECRET})
    f = Fuzz(trainer, root)
    yield f
    f.figures.seconds = time.monotonic() - f.started
    report(f.figures)
    trainer.kill9()
    f.trainer.kill9()  # the one restarted at the end


@settings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking against a live process: the failing batch is printed
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
@given(
    batch=st.lists(cases(), min_size=BATCH[0], max_size=BATCH[1]),
    extra=st.lists(st.tuples(st.integers(0, 10**6), st.integers(-5, 5)), max_size=3),
)
def test_every_hostile_file_gets_one_answer_and_training_goes_on(fuzz: Fuzz, batch: list[Case], extra: Any) -> None:
    fuzz.run(batch, extra)


def test_nothing_ran_twice_and_a_restart_restores_the_same_values(fuzz: Fuzz) -> None:
    mailbox, scratch = fuzz.mailbox, fuzz.scratch
    assert fuzz.figures.tried >= MIN_CASES, f"only {fuzz.figures.tried} entries were tried"
    applied = collections.Counter(dump_list(mailbox, "applied", scratch / "applied.json", secret=SECRET))
    twice = {k: n for k, n in applied.items() if n > 1}
    fuzz.figures.double += len(twice)
    assert not twice, f"evals run more than once: {twice}"
    assert fuzz.expect_applied <= set(applied), f"valid evals not run: {sorted(fuzz.expect_applied - set(applied))}"
    assert set(applied) <= set(fuzz.marks), "an eval ran that no case sent"

    before = fuzz.trainer.state()
    fuzz.trainer.kill9()
    again = Trainer(fuzz.trainer.run_dir, env={"BIDVIZ_SECRET": SECRET})
    fuzz.trainer = again
    again.wait_step_past(None)
    after = again.state()
    for name in ("lr", "mode", "batch"):
        assert after["hparams"][name]["value"] == before["hparams"][name]["value"], name
    assert set(after["metrics"]) == set(before["metrics"])
    assert dump_list(mailbox, "applied", scratch / "applied2.json", secret=SECRET) == [], "no eval re-run"
    fuzz.figures.notes["entries"] = fuzz.figures.tried

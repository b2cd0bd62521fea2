"""Helpers of the proof suite: the mode (short for CI, long for the nightly run), a real training subprocess, a
client that talks to it through real files, the checks every part shares, and the summary lines."""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox

TRAINER = Path(__file__).with_name("proof_trainer.py")
MODE = os.environ.get("BIDVIZ_PROOF", "short")
LONG = MODE == "long"
START_SECONDS = 60.0  # a loaded 2-core CI machine may take long to start Python


def pick(short: Any, long: Any) -> Any:
    """The figure of the current mode."""
    return long if LONG else short


STARTED: list[Trainer] = []


class Trainer:
    """A proof_trainer.py subprocess with a Bridge on `run_dir`; its stderr goes to a file, never a pipe that could
    fill up and block it."""

    def __init__(
        self,
        run_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        sigint_ignored: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.mailbox = Mailbox(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = run_dir.parent / f"{run_dir.name}.stderr.{time.monotonic_ns()}"
        self._stderr = open(self.stderr_path, "wb")
        # sigint_ignored: started as a shell starts a job in the background (`&`, nohup): SIGINT ignored from exec on
        shell = ["/bin/sh", "-c", 'trap "" INT; exec "$0" "$@"'] if sigint_ignored else []
        self.proc = subprocess.Popen(
            [*shell, sys.executable, str(TRAINER), str(run_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
        )
        STARTED.append(self)  # killed at the end of the session whatever happens (conftest)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        line = self._readline(timeout)
        if line.strip() != b"READY":
            self.kill9()
            raise AssertionError(f"trainer did not start: {line!r}; stderr: {self.stderr()}")

    def _readline(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close()

    def stop(self, timeout: float = 60.0) -> int:
        """Send `stop` and wait for the process to end; its exit status."""
        send(self.mailbox, "stop", {})
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def state(self) -> dict[str, Any]:
        state = self.mailbox.read_state()
        assert state is not None, "no state.json"
        return state

    def step(self) -> int | None:
        try:
            return self.state().get("step")
        except Exception:  # noqa: BLE001 - a state being replaced right now: ask again later
            return None

    def wait_step_past(self, step: int | None, timeout: float = 20.0) -> int:
        """The step once it is past `step`: training goes on (AssertionError when it does not)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"the trainer died (exit {self.proc.returncode}); stderr: {self.stderr()}"
            now = self.step()
            if now is not None and (step is None or now > step):
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"training stopped at step {now} (waited {timeout}s for > {step})")
            time.sleep(0.05)

    def wait_state(self, predicate: Any, timeout: float = 20.0, what: str = "a state") -> dict[str, Any]:
        """The first state.json that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                state = self.mailbox.read_state()
                if state is not None and predicate(state):
                    return state
            except (KeyError, TypeError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last state: {json.dumps(state)[:2000]}")

    def hparam(self, name: str) -> Any:
        """The value of a hyperparameter, once the trainer has registered it."""
        state = self.wait_state(lambda s: name in s["hparams"], what=f"hparam {name}")
        return state["hparams"][name]["value"]

    def rss_kb(self) -> int:
        """The process's resident set (VmRSS), in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def send(
    mailbox: Mailbox,
    kind: str,
    args: dict[str, Any],
    *,
    secret: str | None = None,
    clock: protocol.Clock | None = None,
    sender: str = "proof",
) -> str:
    """One command into the inbox as clients send it (tmp + rename); its id."""
    extra = {"clock": clock} if clock is not None else {}
    return mailbox.send(protocol.make_command(kind, args, secret=secret, sender=sender, **extra))


def outbox_ids(mailbox: Mailbox) -> set[str]:
    return {n[:-5] for n in os.listdir(mailbox.outbox) if n.endswith(".json")}


def wait_responses(mailbox: Mailbox, ids: set[str] | list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The responses of `ids` that came within `timeout` seconds (the missing ones are lost)."""
    wanted = set(ids)
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        present = outbox_ids(mailbox) & (wanted - set(got))
        for cid in present:
            resp = mailbox.read_response(cid)
            if resp is not None:
                got[cid] = resp
        if len(got) == len(wanted) or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def wait_inbox_empty(mailbox: Mailbox, timeout: float = 10.0) -> list[str]:
    """What is left in the inbox after `timeout` seconds (empty when everything was taken out)."""
    deadline = time.monotonic() + timeout
    while True:
        left = os.listdir(mailbox.inbox)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


class JournalReader:
    """Reads a journal as it grows: the lines written since the last call."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.path = mailbox.journal_path
        self.offset = 0
        self.commands: collections.Counter[str] = collections.Counter()  # command lines per id, over all reads

    def new_entries(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        out = []
        for raw in data[:end].splitlines():
            entry = json.loads(raw)
            out.append(entry)
            if entry.get("event") == "command":
                self.commands[entry["id"]] += 1
        return out


def eval_now(mailbox: Mailbox, code: str, *, secret: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Run `code` in the training process at the next step; its response (AssertionError when none came)."""
    cid = send(mailbox, "eval", {"code": code}, secret=secret)
    resp = mailbox.wait_response(cid, timeout)
    assert resp is not None, f"no response to eval {code!r}"
    return resp


def dump_list(mailbox: Mailbox, name: str, path: Path, *, secret: str | None = None) -> list[Any]:
    """A list of the trainer's namespace, through a file (it may be too long for a response's result)."""
    resp = eval_now(mailbox, f"json.dump({name}, open({str(path)!r}, 'w'))", secret=secret)
    assert resp["status"] == "applied", resp
    return json.loads(path.read_text())


# -- the summary of each part --------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one part tried and what came of it; printed as one line at the end of the session."""

    part: str
    tried: int = 0
    answered: int = 0
    lost: int = 0
    double: int = 0
    crashed: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"PROOF {MODE} {self.part}: tried={self.tried} answered={self.answered} lost={self.lost} "
            f"double-applied={self.double} crashed={self.crashed} seconds={self.seconds:.0f} {notes}".rstrip()
        )


SUMMARY: list[Figures] = []


def report(figures: Figures) -> None:
    """Keep a part's figures for the session's summary (and the file BIDVIZ_PROOF_REPORT names, as JSON lines)."""
    SUMMARY.append(figures)
    out = os.environ.get("BIDVIZ_PROOF_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"mode": MODE, **figures.__dict__}) + "\n")

"""Helpers for bridge tests: a real training subprocess and a client that talks to it through real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox

TRAINER = Path(__file__).with_name("trainer.py")


class Trainer:
    """A training subprocess with a Bridge on `run_dir`."""

    def __init__(self, run_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        self.mailbox = Mailbox(run_dir)
        self.proc = subprocess.Popen(
            [sys.executable, str(TRAINER), str(run_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"trainer did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def send(self, command: str, /, *, secret: str | None = None, **args: Any) -> str:
        return self.mailbox.send(protocol.make_command(command, args, secret=secret))

    def call(self, command: str, /, *, timeout: float = 20.0, **args: Any) -> dict[str, Any]:
        cid = self.send(command, **args)
        resp = self.mailbox.wait_response(cid, timeout)
        assert resp is not None, f"no response to {command} {args} within {timeout}s; stderr: {self.stderr_now()}"
        return resp

    def state(self) -> dict[str, Any]:
        state = self.mailbox.read_state()
        assert state is not None
        return state

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.mailbox.read_state()
            if state and predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what}; last state: {json.dumps(self.mailbox.read_state())[:2000]}"
        )

    def stderr_now(self) -> str:
        return "" if self.proc.poll() is None else (self.proc.stderr.read() or "")  # type: ignore[union-attr]

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def journal_commands(mailbox: Mailbox, command_id: str) -> list[dict[str, Any]]:
    return [e for e in mailbox.iter_journal() if e.get("event") == "command" and e.get("id") == command_id]


def load_events(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        str(run_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.IMAGES: 0}
    )
    acc.Reload()
    return acc


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = load_events(run_dir)
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]

"""Fixtures for the CLI tests: the real `bidviz` CLI and a real training process, each as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TRAIN_SCRIPT = HERE / "cli_train_script.py"
READY_TIMEOUT = 120.0
CLI_TIMEOUT = 90.0


def _env(secret: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BIDVIZ_SECRET"}
    if secret is not None:
        env["BIDVIZ_SECRET"] = secret
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Training:
    """One training subprocess (tests/cli/cli_train_script.py) with its output collected by reader threads."""

    def __init__(self, run_dir: Path, *, secret: str | None = None, steps: int | None = None) -> None:
        self.run_dir = run_dir
        cmd = [sys.executable, str(TRAIN_SCRIPT), str(run_dir)]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(secret), cwd=HERE
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str], watch_ready: bool) -> None:
        for line in stream:
            lines.append(line)
            if watch_ready and line.strip() == "READY":
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting either way

    def output(self) -> str:
        return f"stdout:\n{''.join(self.stdout)}\nstderr:\n{''.join(self.stderr)}"

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if not self._ready.wait(timeout) or "READY\n" not in self.stdout:
            self.kill()
            pytest.fail(f"the training process did not print READY within {timeout}s\n{self.output()}")

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the training process did not exit within {timeout}s\n{self.output()}")
        self._reap()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        """Collect the last output and close the pipes (the process has exited)."""
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def start_training() -> Iterator[Callable[..., Training]]:
    """Start training processes (READY awaited); every one still running is killed when the module ends."""
    started: list[Training] = []

    def start(run_dir: Path, *, secret: str | None = None, steps: int | None = None) -> Training:
        training = Training(run_dir, secret=secret, steps=steps)
        started.append(training)
        training.wait_ready()
        return training

    yield start
    for training in started:
        training.kill()


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m bidviz ARGS...`; BIDVIZ_SECRET is unset unless `secret=` is given."""

    def run(
        *args: str | Path, secret: str | None = None, input: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bidviz", *map(str, args)],
            capture_output=True,
            text=True,
            input=input,
            env=_env(secret),
            cwd=cwd,
            timeout=CLI_TIMEOUT,
        )

    return run


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    """Poll `predicate` until it returns something truthy (returned), or fail with `what` after `timeout` s."""

    def wait(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    return wait


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / ".bidviz" / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="session")
def state() -> Callable[[Path], dict[str, Any]]:
    """Read a run's state.json ({} while it is missing or being replaced)."""
    return read_state

"""Fixtures for the framework integration tests: an example script training in a subprocess, driven by the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
START_TIMEOUT = 120.0
CLI_TIMEOUT = 90.0


def offline_env(**extra: str) -> dict[str, str]:
    """The environment of a training process: nothing downloaded, no secret, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "BIDVIZ_SECRET"}
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
    )
    env.update(extra)
    return env


class Training:
    """One example script training in a subprocess; its output goes to files next to the run."""

    def __init__(self, script: str, logdir: Path, run: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.run_dir = logdir / run
        logdir.mkdir(parents=True, exist_ok=True)
        self._out_path = logdir / f"{run}.stdout"
        self._err_path = logdir / f"{run}.stderr"
        self._out = self._out_path.open("w")
        self._err = self._err_path.open("w")
        cmd = [sys.executable, str(EXAMPLES / script), "--logdir", str(logdir), "--run", run, *args]
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, env=offline_env(**(env or {})))

    def output(self) -> str:
        self._out.flush()
        self._err.flush()
        return f"stdout:\n{self._out_path.read_text()}\nstderr (last 6000 chars):\n{self._err_path.read_text()[-6000:]}"

    def stdout(self) -> str:
        return self._out_path.read_text()

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / ".bidviz" / "state.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def wait_state(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            value = predicate(state) if state else None
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"training exited ({self.proc.returncode}) while waiting for {what}\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; state: {state}\n{self.output()}")
            time.sleep(0.05)

    def wait_live(self) -> int:
        """Wait until the bridge has seen a step; return that step."""
        step = self.wait_state(lambda s: s.get("step") is not None and str(s["step"]), "the first step", START_TIMEOUT)
        return int(step)

    def wait_steps(self, n: int) -> int:
        start = self.step()
        return int(
            self.wait_state(
                lambda s: s.get("step") is not None and s["step"] >= start + n and str(s["step"]), f"{n} more steps"
            )
        )

    def step(self) -> int:
        return int(self.state().get("step") or 0)

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"training did not exit within {timeout}s\n{self.output()}")
        self._out.close()
        self._err.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


@pytest.fixture
def start_training(tmp_path: Path) -> Iterator[Callable[..., Training]]:
    """Start an example script; every one still running is killed when the test ends."""
    started: list[Training] = []

    def start(script: str, run: str, *args: str, env: dict[str, str] | None = None) -> Training:
        training = Training(script, tmp_path / "logs", run, *args, env=env)
        started.append(training)
        return training

    yield start
    for training in started:
        training.kill()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m bidviz ARGS...` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "bidviz", *map(str, args)],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=CLI_TIMEOUT,
    )


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli

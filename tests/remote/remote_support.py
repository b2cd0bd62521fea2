"""Helpers of the remote tests: subprocesses with logged output, HTTP requests, TensorBoard on a store's log
directory."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# `import tensorflow` fails, so TensorBoard runs on its own stub, as where TensorFlow is not installed.
NO_TF_TENSORBOARD = "import sys; sys.modules['tensorflow'] = None; from tensorboard.main import run_main; run_main()"


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def request(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class Process:
    """A subprocess whose output goes to a file (nothing blocks on a full pipe), ended when the test ends."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, text=True, env=env)

    def output(self) -> str:
        return self.log.read_text()

    def wait_output(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None and not re.search(pattern, self.output()):
                pytest.fail(f"{self.proc.args[:3]} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return re.search(pattern, self.output())

        return wait_for(found, f"{pattern!r} from {self.proc.args[:3]}", timeout)  # type: ignore[no-any-return]

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._out.close()


def tensorboard(start: Callable[..., Process], logdir: str, *extra: str) -> Process:
    return start("-c", NO_TF_TENSORBOARD, "--logdir", logdir, "--host", "127.0.0.1", "--port", "0", *extra)

"""The README's demo walkthrough, command by command as written, twice in a row: `bash scripts/demo.sh` (real
TensorBoard, real training), the commands of its second-terminal block, stop, look, start again.

A newcomer's first hour (issue 14): a command of the first run never touches the second, TensorBoard keeps serving
after a stop, a resumed run says what it replayed and goes on from its last step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _walkthrough() -> list[str]:
    """The lines of the README's bash block that starts with `bidviz status runs`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith("bidviz status runs")]
    return [line for line in block.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _live(run: Path) -> bool:
    try:
        state = json.loads((run / ".bidviz" / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(state.get("heartbeat")) and not state.get("closed") and state.get("step") is not None


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except OSError:
        return 0, b""


def test_the_readme_walkthrough_twice_in_a_row(tmp_path: Path) -> None:
    lines = _walkthrough()
    assert lines[0] == "bidviz status runs" and lines[-1] == "bidviz stop runs/digits-1", lines
    port, serve_port = _free_port(), _free_port()
    env = {**os.environ, "PORT": str(port), "SERVE_PORT": str(serve_port), "LOGDIR": str(tmp_path / "runs")}
    env["INSTALL"] = "0"
    env["PYTHON"] = sys.executable
    env["TMPDIR"] = str(tmp_path)  # the demo's TensorBoard log goes there
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("BIDVIZ_SECRET", None)
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115 - the demo writes to it until the end
    demo = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    def shell(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-ec", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)

    def output() -> str:
        return (tmp_path / "demo.log").read_text()

    try:
        first = tmp_path / "runs" / "digits-1"
        _wait(lambda: _live(first), f"the demo's run {first}\n{output() if demo.poll() is not None else ''}")
        _wait(lambda: _get(f"http://127.0.0.1:{port}/")[0] == 200, "TensorBoard")
        for line in lines:
            out = shell(line)
            assert out.returncode == 0, (line, out.stdout, out.stderr)
        _wait(lambda: "Training ended (exit status 0)" in output(), "the demo to say training ended")
        # TensorBoard still serves the run, and the tab's data with it.
        # TensorBoard lists a run that appeared after it started at its next reload (every few seconds).
        deadline = time.monotonic() + 60
        while "digits-1" not in _get(f"http://127.0.0.1:{port}/data/plugin/bidviz/runs")[1].decode():
            if time.monotonic() > deadline:
                tb_log = tmp_path / "bidviz-demo-tensorboard.log"
                pytest.fail(f"TensorBoard did not list digits-1 in 60 s; its log:\n{tb_log.read_text()[-5000:]}")
            time.sleep(0.5)
        assert demo.poll() is None, output()
        assert "Start another run beside it" in output()
        # and so does the live page (bidviz serve), with the ended run in its list
        status, body = _get(f"http://127.0.0.1:{serve_port}/api/runs")
        assert status == 200 and "digits-1" in body.decode(), body
        assert f"http://127.0.0.1:{serve_port}/" in output()

        # The first run has ended: a command to it is refused at once; one queued for a minute waits for a resume.
        out = shell("bidviz stop runs/digits-1")
        assert out.returncode == 1 and "has ended" in out.stderr, out.stderr
        out = shell("bidviz pause runs/digits-1 --expires 1s --json")
        assert out.returncode == 0, out.stderr
        stale_pause = json.loads(out.stdout)["id"]

        # Again, as the demo says: a new run beside the first, steered by the same commands.
        again = subprocess.Popen(
            [sys.executable, "examples/train_torch.py", "--logdir", str(tmp_path / "runs"), "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        second = tmp_path / "runs" / "digits-2"
        _wait(lambda: _live(second), f"the second run {second}")
        for line in lines:
            out = shell(line.replace("runs/digits-1", "runs/digits-2"))
            assert out.returncode == 0, (line, out.stdout, out.stderr)
        said_again, _ = again.communicate(timeout=60)
        assert again.returncode == 0 and said_again.strip().startswith("training ended at step"), said_again

        # Resuming the first run says what it replays, goes on from its last step, and is not paused by the stale
        # pause (answered Expired).
        time.sleep(1.0)
        resumed = subprocess.run(
            [sys.executable, "examples/train_torch.py", "--resume", str(first), "--steps", "20", "--quiet"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stderr
        said = re.search(r"resuming \S+digits-1 at step (\d+); replayed from its journal: (.*)", resumed.stdout)
        assert said, resumed.stdout
        assert "lr=0.01" in said.group(2) and "momentum=0.5" in said.group(2) and "dropout=0.3" in said.group(2)
        assert "restarted its step count" not in resumed.stderr
        answer = json.loads((first / ".bidviz" / "outbox" / f"{stale_pause}.json").read_text())
        assert answer["status"] == "rejected" and answer["error"]["type"] == "Expired"
        out = shell("bidviz export runs/digits-1 --tag train/loss")
        assert out.returncode == 0 and "restarted" not in out.stderr, out.stderr
        steps = [int(row.split(",")[1]) for row in out.stdout.splitlines()[1:]]
        assert steps == sorted(steps) and len(steps) == len(set(steps)), "two sessions' steps mixed"
        assert not list((second / ".bidviz" / "inbox").iterdir())
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # the demo's trap stops TensorBoard
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        log.close()

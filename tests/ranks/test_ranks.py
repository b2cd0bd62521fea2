"""Every rank of a torch.distributed job (gloo, CPU, real processes at different speeds) applies the same command at
the same step: each rank logs (step, lr) and the logs must agree."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bidviz import protocol
from bidviz.channel import Mailbox

TRAINER = Path(__file__).with_name("ddp_trainer.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Job:
    def __init__(self, run_dir: Path, world: int, *args: str) -> None:
        self.run_dir, self.world = run_dir, world
        run_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(TRAINER),
                    str(run_dir),
                    "--rank",
                    str(k),
                    "--world",
                    str(world),
                    "--port",
                    str(port),
                    *args,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(world)
        ]
        line = self.procs[0].stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "READY":
            errors = self.kill()
            raise RuntimeError(f"rank 0 did not start: {line!r} {errors[0]}")
        self.mailbox = Mailbox(run_dir)

    def call(self, kind: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        cid = self.mailbox.send(protocol.make_command(kind, args))
        resp = self.mailbox.wait_response(cid, timeout)
        assert resp is not None, f"no answer to {kind}; rank 0 stderr: {self.stderr(0)}"
        return resp

    def log(self, rank: int) -> list[dict[str, Any]]:
        lines = (self.run_dir / f"rank{rank}.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if "step" in e]

    def pid(self, rank: int) -> int:
        return int(json.loads((self.run_dir / f"rank{rank}.jsonl").read_text().splitlines()[0])["pid"])

    def wait_steps(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while any(len(self.log(k)) < n for k in range(self.world)):
            assert time.monotonic() < deadline, f"ranks did not reach {n} steps"
            time.sleep(0.05)

    def stderr(self, rank: int) -> str:
        proc = self.procs[rank]
        return "" if proc.poll() is None else (proc.stderr.read() or "")  # type: ignore[union-attr]

    def wait(self, timeout: float = 60) -> list[tuple[int, str, str]]:
        return [(p.wait(timeout), *p.communicate(timeout=timeout)) for p in self.procs]

    def kill(self) -> list[str]:
        """Every rank killed; their stderr."""
        errors = []
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            errors.append(p.communicate(timeout=30)[1] if p.stderr and not p.stderr.closed else "")
        return errors


@pytest.fixture
def jobs():
    started: list[Job] = []
    yield lambda *a, **k: started.append(Job(*a, **k)) or started[-1]
    for job in started:
        job.kill()


CLI: dict[str, Any] = {"check": True, "capture_output": True, "text": True, "timeout": 60}


def first_step(log: list[dict[str, Any]], predicate) -> int:
    return next(e["step"] for e in log if predicate(e))


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_applies_each_command_at_the_same_step(jobs, tmp_path, world):
    job = jobs(tmp_path / "run", world)
    job.wait_steps(5)

    resp = job.call("set_hparam", name="lr", value=0.05)
    assert resp["status"] == "applied", resp
    job.wait_steps(max(len(job.log(k)) for k in range(world)) + 3)
    switched = {first_step(job.log(k), lambda e: e["lr"] == 0.05) for k in range(world)}
    assert switched == {resp["step"]}, "lr switched at the same step on every rank"

    cli = [sys.executable, "-m", "bidviz"]
    out = subprocess.run([*cli, "eval", str(job.run_dir), "rank * 10", "--ranks", "all", "--json"], **CLI)
    resp = json.loads(out.stdout)
    assert resp["status"] == "applied" and resp["result"] == {str(k): repr(k * 10) for k in range(world)}, resp
    assert job.call("eval", code="rank")["result"] == 0, "rank 0 answers by default"
    # A rank's failure is its answer, described without letting the user's code end that rank.
    sly = "class E(Exception):\n    def __str__(self):\n        raise SystemExit(9)\nif rank:\n    raise E()\n'fine'"
    resp = job.call("eval", code=sly, ranks="all")
    failed = "<failed: E: <str() of this E raised an error>>"
    assert resp["result"] == {str(k): "'fine'" if k == 0 else failed for k in range(world)}, resp

    subprocess.run([*cli, "metric", "add", str(job.run_dir), "r", "float(rank)", "--reduce", "mean"], **CLI)
    assert job.call("add_metric", name="each", code="rank + 1", reduce="all")["status"] == "applied"
    assert job.call("add_metric", name="top", code="rank", reduce="max")["status"] == "applied"
    state = job.mailbox.read_state()
    deadline = time.monotonic() + 20
    while any(state["metrics"][n]["last_value"] is None for n in ("r", "each", "top")):
        assert time.monotonic() < deadline, state["metrics"]
        time.sleep(0.1)
        state = job.mailbox.read_state()
    assert state["metrics"]["r"]["last_value"] == pytest.approx(sum(range(world)) / world)
    assert state["metrics"]["top"]["last_value"] == world - 1
    assert state["metrics"]["each"]["last_value"] == {f"rank{k}": k + 1 for k in range(world)}
    assert state["world"] == world

    resp = job.call("pause")
    time.sleep(1.0)
    lengths = [len(job.log(k)) for k in range(world)]
    time.sleep(1.0)
    assert [len(job.log(k)) for k in range(world)] == lengths, "every rank waits while paused"
    # Paused inside step(S) on every rank: each has logged step S - 1 and waits in step(S).
    assert {job.log(k)[-1]["step"] for k in range(world)} == {resp["step"] - 1}, "all paused at the same step"
    assert job.call("eval", code="'alive'", now=True)["repr"] == "'alive'"
    job.call("resume")
    job.wait_steps(lengths[0] + 5)

    resp = job.call("stop")
    results = job.wait()
    assert [r[0] for r in results] == [0] * world, [r[2][-2000:] for r in results]
    assert {job.log(k)[-1]["step"] for k in range(world)} == {resp["step"]}, "every rank left at the same step"
    assert all(e["stop"] for e in (job.log(k)[-1] for k in range(world)))

    from bidviz.writers import read_scalars

    series = read_scalars(tmp_path / "run")
    assert "bidviz/r" in series and "bidviz/each/rank1" in series, sorted(series)
    assert not [p for p in (tmp_path / "run").iterdir() if "tfevents" in p.name][1:], "rank 0 alone writes events"


def test_a_rank_that_dies_is_reported_and_the_others_end_with_a_clear_error(jobs, tmp_path):
    job = jobs(tmp_path / "run", 2, "--no-ddp", "--timeout", "5")
    job.wait_steps(5)
    os.kill(job.pid(1), signal.SIGKILL)
    started = time.monotonic()
    code = job.procs[0].wait(timeout=60)
    took = time.monotonic() - started
    err = job.procs[0].stderr.read()  # type: ignore[union-attr]
    assert code != 0 and "RankLost" in err and "did not reach the sync point" in err, err[-2000:]
    assert took < 30, took
    state = job.mailbox.read_state()
    assert state["rank_error"] and "did not reach the sync point" in state["rank_error"]


def test_a_resumed_job_restores_tuned_values_and_metrics_on_every_rank(jobs, tmp_path):
    job = jobs(tmp_path / "run", 2)
    job.wait_steps(3)
    assert job.call("set_hparam", name="lr", value=0.05)["status"] == "applied"
    assert job.call("add_metric", name="r", code="float(rank)", reduce="mean")["status"] == "applied"
    job.call("stop")
    assert [r[0] for r in job.wait()] == [0, 0]
    for k in range(2):
        (tmp_path / "run" / f"rank{k}.jsonl").unlink()

    again = jobs(tmp_path / "run", 2)
    again.wait_steps(3)
    assert [again.log(k)[0]["lr"] for k in range(2)] == [0.05, 0.05], "the tuned lr holds on every rank from step 0"
    deadline = time.monotonic() + 20
    while (state := again.mailbox.read_state())["metrics"].get("r", {}).get("last_value") is None:
        assert time.monotonic() < deadline, state["metrics"]
        time.sleep(0.1)
    assert state["metrics"]["r"]["reduce"] == "mean"
    assert state["metrics"]["r"]["last_value"] == pytest.approx(0.5), "rank 1 runs the restored metric too"
    while None in (state := again.mailbox.read_state())["rank_steps"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert len(state["rank_steps"]) == 2 and all(isinstance(s, int) for s in state["rank_steps"])
    again.call("stop")
    assert [r[0] for r in again.wait()] == [0, 0]


def test_when_rank_0_cannot_start_the_other_ranks_fail_at_once_saying_why(tmp_path):
    from bidviz import Bridge

    run = tmp_path / "run"
    with Bridge(run):  # a live bridge owns the run: rank 0 of the job is refused
        port = free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, str(TRAINER), str(run), "--rank", str(k), "--world", "2", "--port", str(port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(2)
        ]
        started = time.monotonic()
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] != [0, 0]
    assert procs[1].returncode != 0 and "rank 0's Bridge failed to start" in outs[1][1], outs[1][1][-2000:]
    assert time.monotonic() - started < 45, "rank 1 did not wait for its timeout"

"""Framework callbacks on a real two-process job (CPU, gloo): Lightning's ddp strategy, which launches the second
process itself, and the Hugging Face Trainer under torchrun. Every rank runs a bridge; a `set_hparam` sent to the
mailbox must change every rank's optimizer at the same step, and a `stop` must end every process at the same step
with exit status 0. Each training script logs (step, lr) per rank to LOGDIR/rank<K>.jsonl. And examples/train_ddp.py
under torchrun ends on every rank."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, offline_env
from integration_checks import event_files

from bidviz import protocol
from bidviz.channel import Mailbox
from bidviz.writers import read_scalars

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 150.0  # two processes importing torch and a framework, on a shared 2-core machine
WORLD = 2


class Job:
    """A distributed job started by one launcher process (Lightning's rank 0, or torchrun); output goes to files."""

    def __init__(self, logdir: Path, *cmd: str) -> None:
        """`cmd` runs a training script, which is given `logdir` as its last argument."""
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir, self.run_dir = logdir, logdir / "run"
        self._out, self._err = (logdir / "launcher.stdout").open("w"), (logdir / "launcher.stderr").open("w")
        env = offline_env(OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([*cmd, str(logdir)], stdout=self._out, stderr=self._err, env=env)
        self.mailbox = Mailbox(self.run_dir)

    def output(self) -> str:
        self._out.flush()
        self._err.flush()
        out, err = (self.logdir / "launcher.stdout").read_text(), (self.logdir / "launcher.stderr").read_text()
        return f"stdout (last 3000):\n{out[-3000:]}\nstderr (last 6000):\n{err[-6000:]}"

    def entries(self, rank: int) -> list[dict[str, Any]]:
        path = self.logdir / f"rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def steps(self, rank: int) -> list[dict[str, Any]]:
        return [e for e in self.entries(rank) if "lr" in e]

    def wait_steps(self, n: int, timeout: float = 60.0) -> None:
        """Until every rank has logged `n` steps."""
        deadline = time.monotonic() + timeout
        while any(len(self.steps(k)) < n for k in range(WORLD)):
            if self.proc.poll() is not None:
                pytest.fail(f"the job exited ({self.proc.returncode}) before {n} steps\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"ranks did not reach {n} steps in {timeout:g} s\n{self.output()}")
            time.sleep(0.1)

    def call(self, kind: str, **args: Any) -> dict[str, Any]:
        """Send a command through the mailbox, as the CLI does; its response."""
        cid = self.mailbox.send(protocol.make_command(kind, args))
        response = self.mailbox.wait_response(cid, 60)
        assert response is not None, f"no response to {kind}\n{self.output()}"
        assert response["status"] == "applied", response
        return response  # type: ignore[no-any-return]

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not exit within {timeout:g} s\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._out.close()
        self._err.close()


@pytest.fixture
def jobs(tmp_path: Path) -> Any:
    started: list[Job] = []

    def start(*cmd: str) -> Job:
        started.append(Job(tmp_path / "logs", *cmd))
        return started[-1]

    yield start
    for job in started:
        job.kill()


def check_lockstep(job: Job) -> None:
    """set lr, pause, resume, stop: every rank switches at the step of the response, waits at the step of the
    pause, and leaves at the step of the stop."""
    job.wait_steps(3, START_TIMEOUT)
    before = job.steps(0)[0]["lr"]
    response = job.call("set_hparam", name="lr", value=0.05)
    s = response["step"]
    job.wait_steps(max(len(job.steps(k)) for k in range(WORLD)) + 3)
    for k in range(WORLD):
        lrs = {e["step"]: e["lr"] for e in job.steps(k)}
        switched = min(step for step, lr in lrs.items() if lr == 0.05)
        assert switched == s, f"rank {k} switched at step {switched}, the response says {s}"
        assert lrs.get(s - 1, before) == before, f"rank {k} had lr {lrs.get(s - 1)} before the switch"

    answers = job.call("eval", code="rank, bridge.rank", ranks="all")["result"]
    assert answers == {str(k): repr((k, k)) for k in range(WORLD)}, "a bridge on every rank, each knowing its rank"

    paused = job.call("pause")
    time.sleep(0.5)
    held = [len(job.steps(k)) for k in range(WORLD)]
    time.sleep(1.0)
    assert [len(job.steps(k)) for k in range(WORLD)] == held, "every rank waits in the hook while paused"
    # Paused inside the framework's hook at step S on every rank: each has logged S - 1.
    assert {job.steps(k)[-1]["step"] for k in range(WORLD)} == {paused["step"] - 1}, "paused at the same step"
    job.call("resume")
    job.wait_steps(held[0] + 2)

    stop = job.call("stop")
    code = job.wait()
    assert code == 0, job.output()
    for k in range(WORLD):
        entries = job.entries(k)
        assert entries[-1] == {"exit": 0, "step": stop["step"]}, f"rank {k} did not end at the stop: {entries[-3:]}"
        assert entries[-2]["step"] == stop["step"] and entries[-2]["stop"], entries[-3:]

    state = job.mailbox.read_state()
    assert state is not None, "rank 0 wrote no state.json"
    assert state["world"] == WORLD and state["closed"] and state["stopping"] and not state["rank_error"], state
    assert len(event_files(job.run_dir)) == 1, f"rank 0 alone writes events: {sorted(job.run_dir.iterdir())}"
    series = read_scalars(job.run_dir)
    assert series["hparams/lr"][-1][2] == pytest.approx(0.05), sorted(series)


@pytest.mark.skipif(not importlib.util.find_spec("lightning"), reason="lightning is not installed")
def test_lightning_ddp_every_rank_applies_commands_at_the_same_step(jobs: Any) -> None:
    job = jobs(sys.executable, str(HERE / "ddp_lightning_trainer.py"))
    check_lockstep(job)
    assert "exited with 0" in (job.logdir / "launcher.stdout").read_text(), job.output()  # rank 1, per rank 0


@pytest.mark.skipif(
    not (importlib.util.find_spec("transformers") and importlib.util.find_spec("accelerate")),
    reason="transformers and accelerate are not installed",
)
def test_hf_trainer_under_torchrun_every_rank_applies_commands_at_the_same_step(jobs: Any) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    job = jobs(*launcher, str(HERE / "ddp_hf_trainer.py"))
    check_lockstep(job)  # torchrun exits 0 only when every worker did


def test_the_ddp_example_ends_on_every_rank_under_torchrun(tmp_path: Path) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    script = [str(EXAMPLES / "train_ddp.py"), "--logdir", str(tmp_path), "--steps", "30", "--delay", "0", "--quiet"]
    out = subprocess.run(
        [*launcher, *script], capture_output=True, text=True, timeout=180, env=offline_env(OMP_NUM_THREADS="1")
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-6000:]}"  # torchrun: 0 when every rank was
    for k in range(WORLD):
        assert f"rank {k} of {WORLD}: training ended at step 30\n" in out.stdout, out.stdout
    run = tmp_path / "ddp"
    assert len(event_files(run)) == 1, sorted(run.iterdir())
    assert [s for s, _, _ in read_scalars(run)["train/loss_rank0"]] == list(range(30))
    state = Mailbox(run).read_state()
    assert state is not None, "rank 0 wrote no state.json"
    assert state["world"] == WORLD and state["closed"] and state["step"] == 29, state

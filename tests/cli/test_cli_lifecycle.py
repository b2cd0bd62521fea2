"""Runs that start, stop and restart under the CLI; and signed commands (BIDVIZ_SECRET)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartTraining = Callable[..., Any]
ReadState = Callable[[Path], dict[str, Any]]


def test_stop_ends_training_and_status_goes_from_live_to_ended(
    cli: Cli, start_training: StartTraining, tmp_path: Path, state: ReadState
) -> None:
    run = tmp_path / "logs" / "run_a"
    training = start_training(run)
    (entry,) = json.loads(cli("status", tmp_path / "logs", "--json").stdout)
    assert (entry["run"], entry["state"], entry["pid"]) == ("run_a", "live", training.proc.pid)

    out = cli("stop", run)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stop requested at step ")
    assert training.wait_exit(60) == 0, training.output()
    assert training.stdout[-1].startswith("DONE ")

    (entry,) = json.loads(cli("status", tmp_path / "logs", "--json").stdout)
    assert entry["state"] == "ended"
    out = cli("status", tmp_path / "logs")
    assert out.stdout.splitlines()[1].split()[:2] == ["run_a", "ended"]
    assert state(run)["closed"] is True

    # The real run's state.json, cut short (a disk that filled up, a bad copy): said so, not taken for "no bridge".
    state_json = run / ".bidviz" / "state.json"
    state_json.write_text(state_json.read_text()[:40])
    (entry,) = json.loads(cli("status", tmp_path / "logs", "--json").stdout)
    assert entry["state"] == "unreadable" and str(state_json) in entry["problem"]
    out = cli("metric", "ls", run)
    assert out.returncode == 1 and f"{state_json} (the bridge's state) is corrupt: not JSON" in out.stderr, out.stderr


def test_command_to_an_ended_run_exits_3_and_is_applied_when_it_comes_back(
    cli: Cli, start_training: StartTraining, tmp_path: Path, state: ReadState
) -> None:
    run = tmp_path / "run_b"
    training = start_training(run)
    assert cli("stop", run).returncode == 0
    assert training.wait_exit(60) == 0, training.output()

    started = time.monotonic()
    out = cli("set", run, "dropout=0.4", "--wait", "0.5")
    assert out.returncode == 3
    assert time.monotonic() - started < 20
    assert "has ended" in out.stderr
    assert "queued" in out.stderr and "will be applied if that run's bridge comes back" in out.stderr
    (queued,) = (run / ".bidviz" / "inbox").iterdir()
    command_id = json.loads(queued.read_text())["id"]

    restarted = start_training(run)
    response = run / ".bidviz" / "outbox" / f"{command_id}.json"
    deadline = time.monotonic() + 30
    while not response.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert response.exists(), "the queued command was not answered after the restart"
    assert json.loads(response.read_text())["status"] == "applied"
    assert state(run)["hparams"]["dropout"]["value"] == 0.4
    assert cli("stop", run).returncode == 0
    assert restarted.wait_exit(60) == 0, restarted.output()


def test_killed_training_is_stale_and_commands_time_out(
    cli: Cli, start_training: StartTraining, tmp_path: Path
) -> None:
    run = tmp_path / "run_c"
    training = start_training(run)
    training.kill()
    out = cli("pause", run, "--wait", "0.3")
    assert out.returncode == 3
    # Killed: the heartbeat stops; until it is LIVE_SECONDS old the bridge still looks live.
    assert "is live" in out.stderr or "stale" in out.stderr
    assert "queued" in out.stderr


def test_signed_commands_are_applied_and_mismatched_ones_rejected(
    cli: Cli, start_training: StartTraining, tmp_path: Path, state: ReadState
) -> None:
    run = tmp_path / "run_signed"
    training = start_training(run, secret="s3cret")
    assert state(run)["signed"] is True

    out = cli("set", run, "dropout=0.25", secret="s3cret")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dropout = 0.25 (was 0.1)")

    out = cli("set", run, "dropout=0.5", secret="wrong")
    assert out.returncode == 1
    assert out.stderr.startswith("error: BadSignature: ")
    assert "BIDVIZ_SECRET" in out.stderr

    out = cli("set", run, "dropout=0.5")
    assert out.returncode == 1
    assert out.stderr.startswith("error: BadSignature: ")
    assert state(run)["hparams"]["dropout"]["value"] == 0.25

    assert cli("stop", run, secret="s3cret").returncode == 0
    assert training.wait_exit(60) == 0, training.output()

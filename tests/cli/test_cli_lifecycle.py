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


def test_killed_training_refuses_commands_at_once(cli: Cli, start_training: StartTraining, tmp_path: Path) -> None:
    run = tmp_path / "run_c"
    training = start_training(run)
    training.kill()
    started = time.monotonic()
    out = cli("pause", run, "--wait", "20")
    # Its pid no longer runs on this host: no need to wait for the heartbeat to age, nor for an answer.
    assert out.returncode == 1 and time.monotonic() - started < 15, out.stderr
    assert "no longer runs" in out.stderr and "nothing was sent" in out.stderr
    assert not list((run / ".bidviz" / "inbox").iterdir())


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

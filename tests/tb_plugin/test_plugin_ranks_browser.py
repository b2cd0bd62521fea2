"""A two-rank torch.distributed job (gloo, real processes at different speeds) steered from the tab in headless
Chromium against stock TensorBoard: the tab shows the world size and each rank's step, an lr set in the tab switches
at the same step on both ranks (their own logs say so), and a rank killed with SIGKILL shows as an error banner
that names the sync point it missed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tab_support import Proc, wait_for
from test_plugin_browser import TIMEOUT_MS, browser, page, state_of, tab  # noqa: F401 - fixtures

TRAINER = Path(__file__).parents[1] / "ranks" / "ddp_trainer.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / f"rank{rank}.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [e for e in map(json.loads, lines) if "step" in e]


def test_the_tab_shows_the_ranks_sets_lr_on_every_rank_and_says_when_a_rank_is_lost(
    tmp_path: Path,
    start_tensorboard: Any,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    run_dir = tmp_path / "logs" / "job"
    run_dir.mkdir(parents=True)
    port = _free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, str(TRAINER), str(run_dir), "--rank", str(k), "--world", "2", "--port", str(port)]
            + ["--no-ddp", "--timeout", "5", "--delay", "0.01"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    try:
        assert ranks[0].stdout is not None and ranks[0].stdout.readline().strip() == "READY"
        wait_for(lambda: None not in (state_of(run_dir).get("rank_steps") or [None]), "both ranks' steps", 30)
        ui = tab(page, start_tensorboard(tmp_path / "logs").url)
        expect(ui.get_by_test_id("ranks")).to_have_text(re.compile(r"^2 ranks \(steps 0: \d+, 1: \d+\)$"))
        first = [int(n) for n in re.findall(r"\d: (\d+)", ui.get_by_test_id("ranks").inner_text())]
        expect(ui.get_by_test_id("ranks")).not_to_have_text(f"2 ranks (steps 0: {first[0]}, 1: {first[1]})")

        ui.get_by_test_id("hparam-input-lr").fill("0.025")
        ui.get_by_test_id("hparam-apply-lr").click()
        expect(ui.get_by_test_id("hparam-value-lr")).to_have_text("0.025")
        switched = [
            wait_for(
                lambda k=k: next((e["step"] for e in _log(run_dir, k) if e["lr"] == 0.025), None),
                f"rank {k} to log lr 0.025",
                30,
            )
            for k in range(2)
        ]
        assert switched[0] == switched[1], f"the ranks switched at different steps: {switched}"
        assert all(e["lr"] == 0.1 for k in range(2) for e in _log(run_dir, k) if e["step"] < switched[0])

        pid1 = int(json.loads((run_dir / "rank1.jsonl").read_text().splitlines()[0])["pid"])
        os.kill(pid1, signal.SIGKILL)
        assert ranks[0].wait(timeout=60) != 0, "rank 0 must end with an error when rank 1 is gone"
        banner = ui.get_by_test_id("banner")
        expect(banner).to_contain_text("The ranks of this job lost each other")
        expect(banner).to_contain_text("did not reach the sync point")
        expect(ui.get_by_test_id("hparam-apply-lr")).to_be_disabled()  # an ended job is read-only
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)


def test_a_single_process_run_shows_no_ranks(tmp_path: Path, procs: list[Proc], start_tensorboard: Any, page: Any):  # noqa: F811
    from playwright.sync_api import expect

    from bidviz import Bridge

    with Bridge(tmp_path / "logs" / "solo") as bridge:
        bridge.step(0)
        ui = tab(page, start_tensorboard(tmp_path / "logs").url)
        expect(ui.get_by_test_id("run-status")).to_have_text("live")
        expect(ui.get_by_test_id("ranks")).to_be_hidden()

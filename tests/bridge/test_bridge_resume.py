"""A resumed run and its step count (issue 14), in real processes: `Bridge.resumed_step` is where the previous
session ended; a loop that restarts below it is told once (stderr, journal), and `bidviz export` keeps each series'
latest session unless --all-sessions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SESSION = textwrap.dedent(
    """
    import sys
    import time
    from bidviz import Bridge

    run, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Bridge(run) as bridge:
        print("RESUMED", bridge.resumed_step, flush=True)
        for step in range(first, last + 1):
            bridge.writer.add_scalar("train/loss", float(step), step)
            bridge.step(step)
            time.sleep(0.02)  # a loop under ~100 steps/s: the bridge looks at every step boundary
    """
)


def _session(run: Path, first: int, last: int) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-c", SESSION, str(run), str(first), str(last)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out


def _export(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "bidviz", "export", str(run), "--tag", "train/loss", "--format", "json", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_a_resumed_run_knows_its_last_step_and_a_restarted_step_count_is_told_and_not_mixed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _session(run, 0, 9).stdout.split() == ["RESUMED", "None"]
    # Going on from resumed_step + 1: nothing to say, and the series reads straight through.
    went_on = _session(run, 10, 14)
    assert went_on.stdout.split() == ["RESUMED", "9"] and "restarted" not in went_on.stderr
    out = _export(run)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert [p["step"] for p in json.loads(out.stdout)["train/loss"]] == list(range(15))

    # Restarting at 0: told once on stderr and in the journal; export keeps the latest session.
    restarted = _session(run, 0, 4)
    assert restarted.stdout.split() == ["RESUMED", "14"]
    assert restarted.stderr.count("restarted its step count") == 1, restarted.stderr
    journal = [json.loads(line) for line in (run / ".bidviz" / "journal.jsonl").read_text().splitlines()]
    (told,) = [e for e in journal if e.get("event") == "steps_restarted"]
    assert told["step"] == 0 and "resumed at step 14" in told["reason"]
    out = _export(run)
    assert out.returncode == 0 and "only each one's latest session is exported: 15 earlier point(s)" in out.stderr
    assert [p["step"] for p in json.loads(out.stdout)["train/loss"]] == list(range(5))
    out = _export(run, "--all-sessions")
    assert out.returncode == 0 and out.stderr == ""
    assert len(json.loads(out.stdout)["train/loss"]) == 20

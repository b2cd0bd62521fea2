"""The safety-net verbs of the CLI against a real training process: status names the guard's trip and the rewind
that undoes it, that very command restores the run, the journal tells what happened, rules are added, listed and
removed, and a snapshot is taken on demand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

TRAINER = Path(__file__).parents[1] / "bridge" / "safety_trainer.py"


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "bidviz", *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def state(run: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((run / ".bidviz" / "state.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


def until(run: Path, predicate, what: str, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = state(run)
        if s and predicate(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {str(state(run))[:2000]}")


def test_status_names_the_guard_trip_and_its_rewind_which_works(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TRAINER), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        until(run, lambda s: (s.get("step") or 0) >= 50, "50 steps")
        cli("set", str(run), "lr=200")
        until(run, lambda s: s.get("paused"), "the guard's pause")
        status = cli("status", str(tmp_path)).stdout
        assert "held by the divergence guard at step" in status and ("is nan" in status or "is inf" in status)
        command = re.search(r"`(bidviz rewind [^`]+)`", status)
        assert command is not None, status
        rewound = cli(*command.group(1).split()[1:]).stdout
        assert "rewound at step" in rewound and "values: lr=0.05" in rewound and "undo this rewind:" in rewound
        cli("resume", str(run))
        journal = cli("journal", str(run)).stdout
        assert "divergence guard: loss is" in journal and "rewound at step" in journal

        cli("rule", "add", str(run), "hold", "if step > 0: pause('held by a rule')", "--cooldown", "5")
        until(run, lambda s: s.get("paused"), "the rule's pause")
        listed = cli("rule", "ls", str(run)).stdout
        assert re.search(r"hold\s+running\s+1\s+5\s+1\s", listed), listed
        cli("rule", "rm", str(run), "hold")
        cli("resume", str(run))
        assert cli("rule", "ls", str(run), "--json").stdout.strip() == "{}"
        assert "rule hold fired: pause: held by a rule" in cli("journal", str(run)).stdout

        # Rules go with the metric set: exported, and imported back.
        cli("rule", "add", str(run), "keep", "pass", "--every", "4", "--cooldown", "9")
        exported = tmp_path / "set.json"
        assert "and 1 rule(s)" in cli("metric", "export", str(run), str(exported)).stdout
        assert json.loads(exported.read_text())["rules"] == [
            {"name": "keep", "code": "pass", "every": 4, "cooldown": 9}
        ]
        cli("rule", "rm", str(run), "keep")
        assert "rule keep added (every 4, cool-down 9)" in cli("metric", "import", str(run), str(exported)).stdout
        assert state(run)["rules"]["keep"]["cooldown"] == 9
        bad = json.loads(exported.read_text())
        bad["rules"][0]["every"] = 0
        exported.write_text(json.dumps(bad))
        refused = cli("metric", "import", str(run), str(exported), ok=False)
        assert refused.returncode == 2 and "rule #1 ('keep')" in refused.stderr

        snap = cli("snapshot", str(run), "--reason", "before the weekend").stdout
        assert re.match(r"snapshot s\d+ at step \d+ \(model, optimizer; \d+ bytes, in memory\)", snap), snap
        bad = cli("rule", "add", str(run), "x", "set(lr=", ok=False)
        assert bad.returncode == 1 and "SyntaxError" in bad.stderr
        assert "halve lr when" in cli("rule", "examples").stdout
        cli("stop", str(run))
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)

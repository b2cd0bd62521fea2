"""The checks every framework test makes, each through the real `bidviz` CLI (a subprocess) and real files."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any

from conftest import Training, run_cli

from bidviz.writers import read_scalars


def cli_ok(*args: str | Path) -> str:
    out = run_cli(*args)
    assert out.returncode == 0, f"bidviz {' '.join(map(str, args))} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def send_json(*args: str | Path) -> Any:
    return json.loads(cli_ok(*args, "--json"))


def set_hparam(run: Path, name: str, value: float) -> dict[str, Any]:
    """`bidviz set RUN name=value`; the response (its `step` is the step it was applied at)."""
    (response,) = send_json("set", run, f"{name}={value}")
    assert response["status"] == "applied", response
    assert response["result"]["value"] == value, response
    return response  # type: ignore[no-any-return]


def eval_value(run: Path, code: str) -> Any:
    """`bidviz eval RUN CODE`, its printed repr parsed back as a Python literal."""
    return ast.literal_eval(cli_ok("eval", run, code).strip())


def add_metric(run: Path, name: str, code: str, *, every: int = 1) -> None:
    (response,) = [send_json("metric", "add", run, name, code, "--every", str(every))]
    assert response["status"] == "applied", response
    assert response["result"]["tag"] == f"bidviz/{name}"


def wait_metric_values(training: Training, name: str, n: int = 3, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until state.json shows the metric with a value and no errors."""

    def ready(state: dict[str, Any]) -> Any:
        m = state.get("metrics", {}).get(name)
        if m and m.get("error_count"):
            raise AssertionError(f"metric {name} failed: {json.dumps(m)[:3000]}")
        return m and m.get("last_value") is not None and state["step"] is not None and m

    start = training.step()
    training.wait_state(ready, f"metric {name} to have a value", timeout)
    training.wait_state(lambda s: s.get("step") is not None and s["step"] >= start + n, f"{n} steps")
    return training.state()["metrics"][name]  # type: ignore[no-any-return]


def stop(training: Training, timeout: float = 90.0) -> str:
    """`bidviz stop RUN`, then the process must exit 0; its stdout."""
    (response,) = [send_json("stop", training.run_dir)]
    assert response["status"] == "applied", response
    code = training.wait_exit(timeout)
    assert code == 0, training.output()
    state = training.state()
    assert state["closed"] is True and state["stopping"] is True, state
    return training.stdout()


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    return read_scalars(run_dir)


def event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"))


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def pause_resume(training: Training) -> None:
    """`bidviz pause` holds the training loop inside the framework's hook; `bidviz resume` lets it go on."""
    (response,) = [send_json("pause", training.run_dir)]
    assert response["status"] == "applied", response
    held = training.wait_state(lambda s: s.get("paused") and s, "paused in state.json")
    time.sleep(0.5)
    assert training.state()["step"] == held["step"], "steps went on while paused"
    (response,) = [send_json("resume", training.run_dir)]
    assert response["status"] == "applied", response
    training.wait_state(lambda s: not s.get("paused") and s["step"] > held["step"], "steps after resume")

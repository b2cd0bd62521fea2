"""The CLI against one live training process (shared by the module; each test leaves the run as it found it)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartTraining = Callable[..., Any]
ReadState = Callable[[Path], dict[str, Any]]
WaitUntil = Callable[..., Any]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, start_training: StartTraining) -> Path:
    run_dir = tmp_path_factory.mktemp("logs") / "exp1"
    start_training(run_dir)
    return run_dir


def _journal(cli: Cli, run: Path) -> list[dict[str, Any]]:
    out = cli("journal", run, "--json")
    assert out.returncode == 0, out.stderr
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    return entries


def test_status_shows_the_run_live(cli: Cli, run: Path, wait_until: WaitUntil) -> None:
    wait_until(lambda: cli("status", run.parent, "--json").stdout.count('"live"'), "the run to be live")
    out = cli("status", run.parent)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["RUN", "STATE", "STEP", "STEPS/S", "HEARTBEAT", "PID", "PAUSED"]
    cells = row.split()
    assert cells[:2] == ["exp1", "live"]
    assert cells[-1] == "no"
    (entry,) = json.loads(cli("status", run.parent, "--json").stdout)
    assert entry["state"] == "live" and entry["paused"] is False
    assert entry["heartbeat_age"] < 5


def test_set_lr_prints_the_change_and_updates_state(
    cli: Cli, run: Path, state: ReadState, wait_until: WaitUntil
) -> None:
    out = cli("set", run, "lr=0.05")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"lr = 0\.05 \(was [0-9.e-]+\) at step \d+\n", out.stdout), out.stdout
    assert wait_until(lambda: state(run).get("hparams", {}).get("lr", {}).get("value") == 0.05, "lr 0.05 in state")
    out = cli("set", run, "lr=0.1", "dropout=0.2")
    assert out.returncode == 0, out.stderr
    lr_line, dropout_line = out.stdout.splitlines()
    assert lr_line.startswith("lr = 0.1 (was 0.05) at step ")
    assert dropout_line.startswith("dropout = 0.2 (was 0.1) at step ")
    assert state(run)["hparams"]["dropout"]["value"] == 0.2


def test_set_several_is_all_or_nothing(cli: Cli, run: Path, state: ReadState) -> None:
    lr = state(run)["hparams"]["lr"]["value"]
    out = cli("set", run, "lr=0.07", "dropout=5")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("error: OutOfBounds: ") and "dropout" in out.stderr, out.stderr
    assert state(run)["hparams"]["lr"]["value"] == lr  # lr was valid, but not applied: dropout was not
    (entry,) = _journal(cli, run)[-1:]
    assert entry["status"] == "rejected" and entry["args"] == {"values": {"lr": 0.07, "dropout": 5}}
    out = cli("journal", run, "--tail", "1")
    assert "set lr=0.07, dropout=5 -> rejected: OutOfBounds" in out.stdout, out.stdout


def test_set_with_an_unknown_name_applies_nothing_and_a_set_writes_one_point_a_value_at_its_step(
    cli: Cli, run: Path, state: ReadState, wait_until: WaitUntil
) -> None:
    from bidviz.writers import read_scalars

    lr = state(run)["hparams"]["lr"]["value"]
    out = cli("set", run, "lr=0.03", "lrr=1")
    assert out.returncode == 1 and "UnknownName" in out.stderr and "'lrr'" in out.stderr, out.stderr
    assert state(run)["hparams"]["lr"]["value"] == lr  # not half a change
    out = cli("set", run, "lr=0.04", "momentum=0.8", "--json")
    assert out.returncode == 0, out.stderr
    (response,) = json.loads(out.stdout)
    step = response["step"]
    assert [e["status"] for e in _journal(cli, run) if e.get("id") == response["id"]] == ["applied"]

    def at_step() -> dict[str, list[float]]:
        series = read_scalars(run)
        return {t: [v for s, _, v in series.get(t, []) if s == step] for t in ("hparams/lr", "hparams/momentum")}

    points = wait_until(lambda: (p := at_step()) and all(p.values()) and p, "hparams points at the set's step")
    assert points["hparams/lr"] == [pytest.approx(0.04)] and points["hparams/momentum"] == [pytest.approx(0.8)]


def test_set_json_prints_the_responses(cli: Cli, run: Path) -> None:
    out = cli("set", run, "dropout=0.1", "--json")
    assert out.returncode == 0, out.stderr
    (response,) = json.loads(out.stdout)
    assert response["status"] == "applied" and response["kind"] == "set_hparam"
    assert response["result"]["value"] == 0.1


def test_set_out_of_bounds_exits_1(cli: Cli, run: Path, state: ReadState) -> None:
    out = cli("set", run, "dropout=5")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("error: OutOfBounds: "), out.stderr
    assert "dropout" in out.stderr and "0.9" in out.stderr
    assert state(run)["hparams"]["dropout"]["value"] == 0.1


def test_set_unknown_name_exits_1_and_lists_known_ones(cli: Cli, run: Path) -> None:
    out = cli("set", run, "warp_speed=9")
    assert out.returncode == 1
    assert out.stderr.startswith("error: ")
    assert "warp_speed" in out.stderr and "lr" in out.stderr


def test_set_wrong_type_exits_1(cli: Cli, run: Path) -> None:
    out = cli("set", run, "lr=fast")
    assert out.returncode == 1
    assert "'fast'" in out.stderr


def test_metric_add_ls_pause_resume_rm(cli: Cli, run: Path, state: ReadState, wait_until: WaitUntil) -> None:
    out = cli("metric", "add", run, "loss_x2", "float(loss) * 2", "--every", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("metric loss_x2 added (every 2, kind auto)")
    wait_until(lambda: state(run)["metrics"]["loss_x2"].get("last_value") is not None, "a value of loss_x2")

    out = cli("metric", "ls", run)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "KIND", "EVERY", "STEP", "VALUE", "ERRORS", "CODE"]
    (row,) = [r for r in rows if r.startswith("loss_x2 ")]
    assert row.split()[:4] == ["loss_x2", "running", "auto", "2"]
    assert row.endswith("float(loss) * 2")

    listed = json.loads(cli("metric", "ls", run, "--json").stdout)
    assert listed["loss_x2"]["code"] == "float(loss) * 2" and listed["loss_x2"]["every"] == 2

    out = cli("metric", "pause", run, "loss_x2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("metric loss_x2 paused")
    assert state(run)["metrics"]["loss_x2"]["status"] == "paused"
    out = cli("metric", "resume", run, "loss_x2")
    assert out.returncode == 0, out.stderr
    assert state(run)["metrics"]["loss_x2"]["status"] == "running"

    out = cli("metric", "rm", run, "loss_x2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("metric loss_x2 removed")
    assert "loss_x2" not in json.loads(cli("metric", "ls", run, "--json").stdout)


def test_metric_add_existing_needs_replace(cli: Cli, run: Path) -> None:
    assert cli("metric", "add", run, "twice", "1").returncode == 0
    try:
        out = cli("metric", "add", run, "twice", "2")
        assert out.returncode == 1
        assert "twice" in out.stderr
        out = cli("metric", "add", run, "twice", "2", "--replace")
        assert out.returncode == 0, out.stderr
    finally:
        cli("metric", "rm", run, "twice")


def test_metric_rm_unknown_exits_1(cli: Cli, run: Path) -> None:
    out = cli("metric", "rm", run, "no_such_metric")
    assert out.returncode == 1
    assert "no_such_metric" in out.stderr


def test_metric_add_syntax_error_exits_1_showing_the_line(cli: Cli, run: Path) -> None:
    out = cli("metric", "add", run, "broken", "x = 1\nreturn x +* 2")
    assert out.returncode == 1
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: SyntaxError: ")
    assert "line 2" in first
    assert "SyntaxError: SyntaxError" not in first
    assert "broken" not in json.loads(cli("metric", "ls", run, "--json").stdout)


def test_metric_add_reads_code_from_stdin_and_file(cli: Cli, run: Path, tmp_path: Path) -> None:
    code = "total = 0.0\nfor p in model.parameters():\n    total += float(p.abs().sum())\nreturn total"
    try:
        out = cli("metric", "add", run, "weight_l1", "-", input=code)
        assert out.returncode == 0, out.stderr
        src = tmp_path / "metric.py"
        src.write_text("float(loss)")
        out = cli("metric", "add", run, "loss_copy", "--file", src)
        assert out.returncode == 0, out.stderr
        listed = json.loads(cli("metric", "ls", run, "--json").stdout)
        assert listed["weight_l1"]["code"] == code
        assert listed["loss_copy"]["code"] == "float(loss)"
    finally:
        cli("metric", "rm", run, "weight_l1")
        cli("metric", "rm", run, "loss_copy")


def test_metric_runtime_error_shows_in_ls_and_journal(
    cli: Cli, run: Path, state: ReadState, wait_until: WaitUntil
) -> None:
    out = cli("metric", "add", run, "divider", "x = 1\nreturn x / 0")
    # Its first run fails: added, paused, exit 1 with the error and what to do.
    assert out.returncode == 1, out.stderr
    assert "metric divider added (every 1, kind auto) at step" in out.stderr
    assert "but failed at its first run: ZeroDivisionError: division by zero (line 2)" in out.stderr
    assert "It stays installed, paused" in out.stderr and 'File "<metric divider>", line 2' in out.stderr
    try:
        assert state(run)["metrics"]["divider"]["status"] == "paused"
        assert cli("metric", "resume", run, "divider").returncode == 0
        wait_until(lambda: state(run)["metrics"]["divider"].get("error_count", 0) > 0, "divider to fail")
        out = cli("metric", "ls", run)
        assert "divider: last error: ZeroDivisionError: division by zero (line 2)" in out.stdout, out.stdout
        journal = cli("journal", run).stdout
        assert re.search(r"metric_error divider -> ZeroDivisionError: division by zero \(line 2\)", journal), journal
    finally:
        cli("metric", "rm", run, "divider")


def test_eval_prints_the_repr(cli: Cli, run: Path) -> None:
    out = cli("eval", run, "[g['lr'] for g in optimizer.param_groups]")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"\[[0-9.e-]+\]\n", out.stdout), out.stdout
    out = cli("eval", run, "x = 6\nx * 7")
    assert (out.returncode, out.stdout) == (0, "42\n")
    out = cli("eval", run, "-", input="6 * 7\n")
    assert (out.returncode, out.stdout) == (0, "42\n")
    out = cli("eval", run, "'a' + 'b'", "--now")
    assert (out.returncode, out.stdout) == (0, "'ab'\n")


def test_eval_that_raises_exits_1_with_the_traceback(cli: Cli, run: Path) -> None:
    out = cli("eval", run, "def f():\n    return 1 / 0\nf()")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines[0].startswith("error: ZeroDivisionError: division by zero")
    assert "Traceback (most recent call last):" in out.stderr
    assert "line 2" in out.stderr


def test_eval_json_carries_result_and_repr(cli: Cli, run: Path) -> None:
    out = cli("eval", run, "{'a': [1, 2]}", "--json")
    assert out.returncode == 0, out.stderr
    response = json.loads(out.stdout)
    assert response["result"] == {"a": [1, 2]} and response["repr"] == "{'a': [1, 2]}"


def test_diagnostics_adds_metrics(cli: Cli, run: Path) -> None:
    out = cli("diagnostics", run, "--every", "5", "--json")
    assert out.returncode == 0, out.stderr
    names = json.loads(out.stdout)["result"]
    try:
        assert names and all(isinstance(n, str) for n in names)
        listed = json.loads(cli("metric", "ls", run, "--json").stdout)
        assert all(listed[n]["every"] == 5 for n in names)
    finally:
        for name in names:
            cli("metric", "rm", run, name)


def test_pause_and_resume(cli: Cli, run: Path, state: ReadState, wait_until: WaitUntil) -> None:
    out = cli("pause", run)
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("paused at step ")
        assert state(run)["paused"] is True
        # Paused in bridge.step(), the bridge still answers commands.
        assert cli("eval", run, "1 + 1").stdout == "2\n"
        (entry,) = json.loads(cli("status", run.parent, "--json").stdout)
        assert entry["paused"] is True and entry["state"] == "live"
    finally:
        out = cli("resume", run)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("resumed at step ")
    assert state(run)["paused"] is False
    step = state(run)["step"]
    wait_until(lambda: state(run)["step"] > step, "steps after resume")


def test_no_wait_returns_an_id_that_gets_answered(cli: Cli, run: Path, wait_until: WaitUntil) -> None:
    out = cli("eval", run, "3 * 3", "--no-wait")
    assert out.returncode == 0, out.stderr
    command_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", command_id)
    response = run / ".bidviz" / "outbox" / f"{command_id}.json"
    wait_until(response.exists, "the response to the --no-wait command")
    assert json.loads(response.read_text())["repr"] == "9"


def test_journal_shows_the_commands(cli: Cli, run: Path) -> None:
    assert cli("set", run, "dropout=0.3").returncode == 0
    assert cli("set", run, "dropout=0.1").returncode == 0
    out = cli("journal", run, "--tail", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+  cli:\S+ +set dropout=0\.(3|1) -> applied"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    entries = _journal(cli, run)
    rejected = [e for e in entries if e.get("status") == "rejected"]
    assert rejected, "the earlier out-of-bounds set must be journaled as rejected"
    assert any(e["kind"] == "set_hparam" and e["args"] == {"name": "dropout", "value": 5} for e in rejected)


def test_metric_export_import_roundtrip(cli: Cli, run: Path, tmp_path: Path) -> None:
    assert cli("metric", "add", run, "rt_a", "float(loss)", "--every", "3").returncode == 0
    assert cli("metric", "add", run, "rt_b", "step % 7", "--kind", "scalar").returncode == 0
    exported = tmp_path / "metrics.json"
    try:
        out = cli("metric", "export", run, exported)
        assert out.returncode == 0, out.stderr
        data = json.loads(exported.read_text())
        assert data["bidviz_metrics"] == 1
        by_name = {m["name"]: m for m in data["metrics"]}
        assert by_name["rt_a"] == {"name": "rt_a", "code": "float(loss)", "every": 3, "kind": "auto"}
        assert by_name["rt_b"] == {"name": "rt_b", "code": "step % 7", "every": 1, "kind": "scalar"}

        for name in ("rt_a", "rt_b"):
            assert cli("metric", "rm", run, name).returncode == 0
        out = cli("metric", "import", run, exported)
        assert out.returncode == 0, out.stderr
        assert "metric rt_a added (every 3, kind auto)" in out.stdout
        assert "metric rt_b added (every 1, kind scalar)" in out.stdout
        again = tmp_path / "again.json"
        assert cli("metric", "export", run, again).returncode == 0
        assert json.loads(again.read_text()) == data

        # Importing again replaces them (replace=true), so it succeeds too.
        assert cli("metric", "import", run, exported).returncode == 0
    finally:
        for name in ("rt_a", "rt_b"):
            cli("metric", "rm", run, name)


def test_metric_import_reports_each_failure(cli: Cli, run: Path, tmp_path: Path) -> None:
    file = tmp_path / "mixed.json"
    metrics = [{"name": "imp_ok", "code": "1.5"}, {"name": "imp_bad", "code": "1 +"}]
    file.write_text(json.dumps({"bidviz_metrics": 1, "metrics": metrics}))
    try:
        out = cli("metric", "import", run, file)
        assert out.returncode == 1
        assert "metric imp_ok added" in out.stdout
        assert "error: SyntaxError" in out.stderr and "(in metric imp_bad)" in out.stderr
    finally:
        cli("metric", "rm", run, "imp_ok")


def test_export_series_as_csv_and_json(cli: Cli, run: Path, tmp_path: Path, wait_until: WaitUntil) -> None:
    assert cli("set", run, "lr=0.05").returncode == 0  # this test's own point of hparams/lr, whatever ran before
    assert cli("metric", "add", run, "export_me", "float(step)").returncode == 0
    try:

        def three_points() -> list[dict[str, Any]] | None:
            out = cli("export", run, "--tag", "bidviz/export_me", "--format", "json")
            points = json.loads(out.stdout).get("bidviz/export_me", []) if out.returncode == 0 else []
            return points if len(points) >= 3 else None

        points = wait_until(three_points, "bidviz/export_me in the event files")
        assert all(p["value"] == float(p["step"]) for p in points)
        assert all(isinstance(p["wall_time"], float) for p in points)

        target = tmp_path / "series.csv"
        out = cli("export", run, "--tag", "bidviz/export_*", "--tag", "hparams/lr", "-o", target)
        assert out.returncode == 0, out.stderr
        rows = list(csv.DictReader(io.StringIO(target.read_text())))
        assert set(rows[0]) == {"tag", "step", "wall_time", "value"}
        assert {r["tag"] for r in rows} == {"bidviz/export_me", "hparams/lr"}
        lrs = [float(r["value"]) for r in rows if r["tag"] == "hparams/lr"]
        assert any(v == pytest.approx(0.05) for v in lrs), lrs  # event files hold float32

        out = cli("export", run, "--tag", "no/such/tag")
        assert out.returncode == 1
        assert "no scalar series 'no/such/tag'" in out.stderr and "bidviz/export_me" in out.stderr
    finally:
        cli("metric", "rm", run, "export_me")

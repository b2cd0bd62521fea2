"""The CLI without a live bridge: usage errors (2), no mailbox or no answer (3), --no-wait, reading files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bidviz.channel import Mailbox

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_import_pulls_in_neither_torch_nor_tensorboard() -> None:
    code = "import sys, bidviz.cli; bad = {'torch', 'tensorboard', 'tensorboardX', 'bidviz.bridge'} & set(sys.modules);"
    code += "print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_verb_is_a_usage_error(cli: Cli) -> None:
    out = cli()
    assert out.returncode == 2
    assert "usage: bidviz" in out.stderr


def test_unknown_verb_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    out = cli("frobnicate", tmp_path)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_help_exits_zero(cli: Cli) -> None:
    out = cli("set", "--help")
    assert out.returncode == 0
    assert "NAME=VALUE" in out.stdout


def test_set_without_equals_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    Mailbox(tmp_path).create()
    out = cli("set", tmp_path, "lr", "--wait", "0")
    assert out.returncode == 2
    assert "expected NAME=VALUE" in out.stderr and "'lr'" in out.stderr
    assert not list(Mailbox(tmp_path).inbox.iterdir()), "a usage error must send nothing"


def test_one_bad_assignment_sends_none_of_them(cli: Cli, tmp_path: Path) -> None:
    Mailbox(tmp_path).create()
    out = cli("set", tmp_path, "lr=0.1", "../x=1", "--wait", "0")
    assert out.returncode == 2
    assert "hyperparameter name" in out.stderr
    assert not list(Mailbox(tmp_path).inbox.iterdir())


def test_bad_every_and_kind_and_wait_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    Mailbox(tmp_path).create()
    for args in (
        ["metric", "add", tmp_path, "m", "1", "--every", "0"],
        ["metric", "add", tmp_path, "m", "1", "--kind", "movie"],
        ["metric", "add", tmp_path, "m"],
        ["set", tmp_path, "lr=1", "--wait", "-1"],
        ["set", tmp_path, "lr=1", "--wait", "1", "--no-wait"],
        ["journal", tmp_path, "--tail", "x"],
    ):
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "error" in out.stderr


def test_a_path_that_is_not_a_run_is_a_usage_error_with_the_runs_meant(cli: Cli, tmp_path: Path) -> None:
    out = cli("set", tmp_path / "nowhere", "lr=0.1", "--wait", "1")
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr
    logs = tmp_path / "runs"
    for name in ("digits", "digits-2", "other/deep"):
        Mailbox(logs / name).create()
    # The log directory instead of a run: its runs are listed.
    out = cli("set", logs, "lr=0.1")
    assert out.returncode == 2, out.stderr
    assert "is not a run but holds 3" in out.stderr and f"{logs / 'digits-2'}" in out.stderr, out.stderr
    assert f"{logs / 'other/deep'}" in out.stderr
    # A typo: the runs beside it that look like it.
    out = cli("pause", logs / "digts")
    assert out.returncode == 2 and f"did you mean {logs / 'digits'}" in out.stderr, out.stderr
    # A directory with no runs at all says no Bridge ran there.
    (tmp_path / "empty").mkdir()
    out = cli("stop", tmp_path / "empty")
    assert out.returncode == 2 and "no Bridge has run there" in out.stderr, out.stderr
    assert not [p for p in logs.rglob("inbox/*")], "a usage error sent something"


def test_never_started_bridge_exits_3_and_withdraws_the_command(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    started = time.monotonic()
    out = cli("pause", tmp_path, "--wait", "0.3", "--json")
    assert out.returncode == 3
    assert time.monotonic() - started < 20
    assert "no response" in out.stderr and "within 0.3s" in out.stderr
    assert "no bridge has ever written its state" in out.stderr
    assert "withdrawn: it was not applied and never will be" in out.stderr
    assert json.loads(out.stdout)["status"] == "withdrawn"
    assert not list(mailbox.inbox.iterdir()) and not list(mailbox.tmp.iterdir())


def test_a_queued_command_stays_with_its_expiry(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    before = time.time()
    out = cli("pause", tmp_path, "--wait", "0.2", "--expires", "1h", "--json")
    assert out.returncode == 3 and "applied if a bridge claims it before" in out.stderr, out.stderr
    (queued,) = mailbox.inbox.iterdir()
    command = json.loads(queued.read_text())
    assert command["kind"] == "pause" and command["id"] in out.stderr and command["sender"].startswith("cli:")
    assert before + 3599 < command["expires_at"] < time.time() + 3601
    assert json.loads(out.stdout)["status"] == "pending"


def test_stale_bridge_exits_3_and_says_stale(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    mailbox.write_state({"v": 1, "pid": 4242, "host": "elsewhere", "heartbeat": time.time() - 600, "step": 7})
    out = cli("set", tmp_path, "lr=0.1", "--wait", "0.2")
    assert out.returncode == 3
    assert "stale" in out.stderr and "pid 4242" in out.stderr
    assert "withdrawn" in out.stderr and not list(mailbox.inbox.iterdir())


def test_no_wait_prints_the_id_and_queues_the_command(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    out = cli("eval", tmp_path, "1 + 1", "--no-wait")
    assert out.returncode == 0, out.stderr
    command_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", command_id)
    (queued,) = mailbox.inbox.iterdir()
    assert queued.name.endswith(f"-{command_id}.json")
    command = json.loads(queued.read_text())
    assert command["args"] == {"code": "1 + 1", "now": False}
    assert command["expires_at"] == command["sent_at"] + 30  # nobody waits: it expires after the default --wait


def test_set_values_are_json_when_they_parse(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    out = cli("set", tmp_path, "a=0.01", "b=3", "c=true", "d=[0.9, 0.99]", 'e="x"', "f=adam", "g=NaN", "--no-wait")
    assert out.returncode == 0, out.stderr
    # One command for all of them, so the bridge applies all or none.
    (command_id,) = out.stdout.split()
    (sent,) = [json.loads(p.read_text()) for p in mailbox.inbox.iterdir()]
    assert sent["id"] == command_id and sent["kind"] == "set_hparam"
    assert list(sent["args"]["values"].items()) == [
        ("a", 0.01),
        ("b", 3),
        ("c", True),
        ("d", [0.9, 0.99]),
        ("e", "x"),
        ("f", "adam"),
        ("g", "NaN"),
    ]


def test_set_one_value_sends_name_and_value_and_a_repeated_name_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    out = cli("set", tmp_path, "lr=0.5", "lr=0.1", "--no-wait")
    assert out.returncode == 2 and "lr is given twice" in out.stderr
    assert not list(mailbox.inbox.iterdir())
    assert cli("set", tmp_path, "lr=0.5", "--no-wait").returncode == 0
    (sent,) = [json.loads(p.read_text()) for p in mailbox.inbox.iterdir()]
    assert sent["args"] == {"name": "lr", "value": 0.5}


def test_secret_signs_commands(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    assert cli("stop", tmp_path, "--no-wait", secret="s3cret").returncode == 0
    assert cli("resume", tmp_path, "--no-wait").returncode == 0
    signed, unsigned = (json.loads(p.read_text()) for p in sorted(mailbox.inbox.iterdir()))
    assert re.fullmatch(r"[0-9a-f]{64}", signed["sig"])
    assert "sig" not in unsigned


def test_status_of_an_empty_logdir_and_of_a_missing_one(cli: Cli, tmp_path: Path) -> None:
    out = cli("status", tmp_path, "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
    out = cli("status", tmp_path / "missing")
    assert out.returncode == 2 and "not a directory" in out.stderr


def test_status_lists_never_started_and_stale_runs(cli: Cli, tmp_path: Path) -> None:
    Mailbox(tmp_path / "a").create()
    stale = Mailbox(tmp_path / "b" / "c")
    stale.create()
    stale.write_state({"pid": 99, "heartbeat": time.time() - 100, "step": 5, "paused": False})
    out = cli("status", tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "STEP", "STEPS/S", "HEARTBEAT", "PID", "PAUSED"]
    assert lines[1].split()[:2] == ["a", "none"]
    assert lines[2].split()[:3] == ["b/c", "stale", "5"]
    rows = json.loads(cli("status", tmp_path, "--json").stdout)
    assert [(r["run"], r["state"], r["pid"]) for r in rows] == [("a", "none", None), ("b/c", "stale", 99)]


def test_metric_import_rejects_a_file_that_is_not_a_metric_set(cli: Cli, tmp_path: Path) -> None:
    Mailbox(tmp_path).create()
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": []}')
    out = cli("metric", "import", tmp_path, bad)
    assert out.returncode == 2 and "not a metric set" in out.stderr
    bad.write_text("{not json")
    out = cli("metric", "import", tmp_path, bad)
    assert out.returncode == 2 and "not JSON" in out.stderr
    # Every entry is validated before any is sent: one bad name sends none of them.
    bad.write_text(
        json.dumps({"bidviz_metrics": 1, "metrics": [{"name": "ok", "code": "1"}, {"name": "../x", "code": "1"}]})
    )
    out = cli("metric", "import", tmp_path, bad, "--no-wait")
    assert out.returncode == 2 and "metric #2" in out.stderr
    bad.write_text("[" * 100_000)
    assert cli("metric", "import", tmp_path, bad).returncode == 2
    assert not list(Mailbox(tmp_path).inbox.iterdir())


def test_metric_import_reads_a_set_written_by_the_earlier_cli(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    old = tmp_path / "old.json"  # as `bidviz metric export` wrote it before the format moved to bidviz.kinds
    old.write_text(
        json.dumps(
            {
                "bidviz_metrics": 1,
                "metrics": [
                    {"name": "a", "code": "float(loss)", "every": 3, "kind": "auto"},
                    {"name": "b", "code": "step % 7", "every": 1, "kind": "scalar"},
                ],
            },
            indent=2,
        )
    )
    out = cli("metric", "import", tmp_path, old, "--no-wait")
    assert out.returncode == 0, out.stderr
    sent = [json.loads(p.read_text()) for p in sorted(mailbox.inbox.iterdir())]
    assert [(c["kind"], c["args"]) for c in sent] == [
        ("add_metric", {"name": "a", "code": "float(loss)", "every": 3, "kind": "auto", "replace": True}),
        ("add_metric", {"name": "b", "code": "step % 7", "every": 1, "kind": "scalar", "replace": True}),
    ]


def test_metric_export_writes_the_kinds_table_format(cli: Cli, tmp_path: Path) -> None:
    from bidviz import kinds

    mailbox = Mailbox(tmp_path)
    mailbox.create()
    metrics = {"m": {"code": "1.5", "every": 2, "kind": "scalar", "status": "running"}}
    mailbox.write_state({"v": 1, "pid": 1, "heartbeat": 0.0, "metrics": metrics})
    out = cli("metric", "export", tmp_path, "-")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == kinds.metric_set(metrics)
    assert kinds.read_metric_set(json.loads(out.stdout))[0]["name"] == "m"


def test_reading_verbs_without_a_mailbox_exit_2(cli: Cli, tmp_path: Path) -> None:
    for args in (["journal", tmp_path], ["metric", "ls", tmp_path], ["metric", "export", tmp_path, "-"]):
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "no BIDViz mailbox" in out.stderr


def test_journal_prints_entries_oldest_first(cli: Cli, tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path)
    mailbox.create()
    t = time.mktime((2025, 3, 4, 5, 6, 7, 0, 0, -1))
    mailbox.append_journal(
        {
            "time": t,
            "step": 3,
            "event": "command",
            "id": "a" * 32,
            "kind": "set_hparam",
            "args": {"name": "lr", "value": 0.01},
            "sender": "cli:me@here",
            "status": "applied",
        }
    )
    mailbox.append_journal(
        {
            "time": t + 1,
            "step": 12,
            "event": "command",
            "id": "b" * 32,
            "kind": "set_hparam",
            "args": {"name": "lr", "value": -1},
            "sender": "cli:me@here",
            "status": "rejected",
            "error": {
                "type": "OutOfBounds",
                "message": "lr must be >= 0.0; received -1",
                "traceback": "",
                "line": None,
            },
        }
    )
    mailbox.append_journal(
        {
            "time": t + 2,
            "step": 20,
            "event": "metric_error",
            "metric": "m",
            "error": {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "...", "line": 2},
        }
    )
    mailbox.append_journal(
        {
            "time": t + 3,
            "step": 21,
            "event": "command",
            "id": "c" * 32,
            "kind": "set_hparam",
            "args": {"values": {"lr": 0.1, "dropout": 0.2}},
            "label": "set lr=0.1, dropout=0.2",
            "sender": "tab:127.0.0.1",
            "status": "applied",
        }
    )
    out = cli("journal", tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Lines written before the bridge wrote labels get the label their kind gives their args.
    assert lines[0] == "2025-03-04 05:06:07   3  cli:me@here    set lr=0.01 -> applied"
    assert lines[1].startswith("2025-03-04 05:06:08  12  cli:me@here    set lr=-1")
    assert lines[1].endswith("-> rejected: OutOfBounds: lr must be >= 0.0; received -1")
    assert "metric_error m -> ZeroDivisionError: division by zero (line 2)" in lines[2]
    assert lines[3].endswith("tab:127.0.0.1  set lr=0.1, dropout=0.2 -> applied")
    tail = cli("journal", tmp_path, "--tail", "1", "--json")
    assert [e["step"] for e in json.loads(tail.stdout)] == [21]


def test_export_of_a_missing_run_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    out = cli("export", tmp_path / "missing")
    assert out.returncode == 2 and "does not exist" in out.stderr

"""`bidviz export` over the reader: runs of our writer and of TF2's format, CSV and JSON, truncated files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from bidviz.cli import main
from bidviz.writers import EventWriter


def tf2_run(run_dir: Path) -> Path:
    writer = EventFileWriter(str(run_dir))
    for step in range(3):
        summary = scalar_pb("eval/loss", 1.0 / (step + 1))
        if step:
            summary.value[0].ClearField("metadata")  # as TF2 writes it
        writer.add_event(event_pb2.Event(step=step, wall_time=100.0 + step, summary=summary))
    writer.close()
    return run_dir


def test_export_a_tf2_run_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tf2_run(tmp_path)), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "eval/loss": [
            {"step": 0, "wall_time": 100.0, "value": 1.0},
            {"step": 1, "wall_time": 101.0, "value": 0.5},
            {"step": 2, "wall_time": 102.0, "value": pytest.approx(1 / 3)},
        ]
    }


def test_export_our_run_as_csv_with_tag_patterns_and_non_finite_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("train/loss", 0.5, 1, walltime=10.0)
        writer.add_scalar("train/loss", float("nan"), 2, walltime=11.0)
        writer.add_scalars("acc", {"val": 0.75}, 2, walltime=12.0)
        writer.add_text("notes", "not exported", 2)
    assert main(["export", str(tmp_path), "--tag", "train/*", "--tag", "acc/val"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["tag", "step", "wall_time", "value"],
        ["train/loss", "1", "10.0", "0.5"],
        ["train/loss", "2", "11.0", "nan"],
        ["acc/val", "2", "12.0", "0.75"],
    ]
    assert main(["export", str(tmp_path), "--format", "json", "--tag", "train/loss"]) == 0
    assert [p["value"] for p in json.loads(capsys.readouterr().out)["train/loss"]] == [
        0.5,
        "NaN",
    ]  # JSON has no NaN: the protocol spells it


def test_export_of_a_run_cut_short_warns_and_exports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with EventWriter(tmp_path) as writer:
        for step in range(3):
            writer.add_scalar("x", float(step), step)
    with open(writer.path, "r+b") as stream:
        stream.truncate(Path(writer.path).stat().st_size - 3)
    assert main(["export", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert [p["step"] for p in json.loads(captured.out)["x"]] == [0, 1]
    assert "warning: " in captured.err and "skipped a truncated record at byte offset" in captured.err


def test_export_of_a_corrupted_run_fails_with_the_file_and_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("x", 1.0, 1)
    data = bytearray(Path(writer.path).read_bytes())
    data[-5] ^= 0xFF
    Path(writer.path).write_bytes(bytes(data))
    assert main(["export", str(tmp_path)]) == 1
    assert f"{writer.path}: corrupted record at byte offset" in capsys.readouterr().err

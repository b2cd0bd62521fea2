"""EventTail: what a live reader sees of growing event files is what read_scalars reads of the finished ones."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import tensorboardX

from bidviz.writers import EventWriter, read_scalars
from bidviz.writers.records import frame
from bidviz.writers.tail import EventTail


def test_tail_reads_only_appended_records_and_matches_the_full_read(tmp_path: Path) -> None:
    tail = EventTail(tmp_path)
    assert not tail.poll()  # an empty directory
    writer = EventWriter(tmp_path, flush_secs=60)
    for step in range(100):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.flush()
    first = tail.poll()
    assert "loss" in first.new_tags and [p[0] for p in first.points["loss"]] == list(range(100))
    assert not tail.poll()  # nothing new: nothing reported
    for step in range(100, 130):
        writer.add_scalar("loss", 0.5, step)
        writer.add_scalar("acc/train", step / 200, step)
    writer.close()
    second = tail.poll()
    assert [p[0] for p in second.points["loss"]] == list(range(100, 130))
    assert second.new_tags == ["acc/train"]
    assert tail.series == read_scalars(tmp_path)


def test_a_record_cut_short_waits_for_its_end_without_a_warning(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.add_scalar("x", 1.0, 0)
    writer.add_scalar("x", 2.0, 1)
    writer.close()
    (file,) = tmp_path.glob("*tfevents*")
    whole = file.read_bytes()
    file.write_bytes(whole[:-7])  # the last record half written
    tail = EventTail(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        update = tail.poll()
    assert [p[0] for p in update.points["x"]] == [0]
    with file.open("ab") as f:
        f.write(whole[-7:])
    assert [p[:3:2] for p in tail.poll().points["x"]] == [(1, 2.0)]


def test_a_second_writer_file_is_followed_and_a_corrupt_record_is_named(tmp_path: Path) -> None:
    tail = EventTail(tmp_path)
    with EventWriter(tmp_path) as w:
        w.add_scalar("a", 1.0, 0)
    assert tail.poll().points["a"]
    tbx = tensorboardX.SummaryWriter(str(tmp_path), filename_suffix=".second")
    tbx.add_scalar("b", 3.0, 5)
    tbx.close()
    update = tail.poll()
    assert update.new_tags == ["b"] and update.points["b"][0][2] == 3.0
    other = sorted(tmp_path.glob("*tfevents*"))[-1]
    with other.open("ab") as f:  # a whole record whose data checksum is wrong
        good = frame(b"not an event")
        f.write(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(ValueError, match="corrupted record at byte offset"):
        tail.poll()

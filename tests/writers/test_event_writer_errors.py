"""EventWriter on a full disk: no record lost, none written twice, and the error reaches the caller.

The disk is faked at the file object (`FullDisk` behaves as write(2) does when the disk fills: a short write, then
ENOSPC), or real: a small tmpfs when this process may mount one. Every run is read back with our reader and with
TensorBoard's EventAccumulator.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bidviz.writers import EventWriter, read_events, read_scalars


class FullDisk:
    """Stands in for an EventWriter's file: writes what still fits in `room` bytes (a short write, as write(2)
    returns), then raises OSError(ENOSPC). `room = None`: the disk has room again."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.room: int | None = None
        self.calls = 0

    def write(self, data: bytes) -> int:
        self.calls += 1
        if self.room is None:
            return int(self.file.write(data))
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = int(self.file.write(bytes(data[: self.room])))
        self.room -= count
        return count

    def __getattr__(self, name: str) -> Any:  # flush, close, closed, fileno: the real file's
        return getattr(self.file, name)


Attach = Callable[[EventWriter], FullDisk]


@pytest.fixture
def full_disk() -> Iterator[Attach]:
    """Puts a `FullDisk` under a writer's file; at teardown gives the disk room and closes the writer, so that a
    failed test leaves no writer for the garbage collector to close on a full disk."""
    attached: list[tuple[EventWriter, FullDisk]] = []

    def attach(writer: EventWriter) -> FullDisk:
        disk = FullDisk(writer._sink.file)
        writer._sink.file = disk  # type: ignore[assignment]
        attached.append((writer, disk))
        return disk

    yield attach
    for writer, disk in attached:
        disk.room = None
        writer.close()


def add_steps(writer: EventWriter, steps: Iterable[int]) -> None:
    for step in steps:
        writer.add_scalar("loss", float(step), step)


def assert_every_step_once_in_order(run_dir: Path, steps: Iterable[int]) -> None:
    expected = [(step, float(step)) for step in steps]
    # Our reader checks both checksums of every record; a record cut short would warn, an error under pytest here.
    assert [(step, value) for step, _, value in read_scalars(run_dir)["loss"]] == expected
    assert len(list(read_events(run_dir))) == len(expected) + 1  # and the file_version event: nothing else
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert [(event.step, event.value) for event in accumulator.Scalars("loss")] == expected


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_full_disk_loses_no_step_and_writes_none_twice(tmp_path: Path, full_disk: Attach) -> None:
    writer = EventWriter(tmp_path, flush_secs=600)
    disk = full_disk(writer)
    add_steps(writer, range(100))
    writer.flush()
    disk.room = 100  # two records and a half fit, then the disk is full
    add_steps(writer, range(100, 200))
    with pytest.raises(OSError) as raised:
        writer.flush()
    assert raised.value.errno == errno.ENOSPC and writer.error is raised.value
    add_steps(writer, range(200, 300))
    with pytest.raises(OSError) as again:  # still full: the next flush tries again, and says so
        writer.flush()
    assert again.value.errno == errno.ENOSPC and writer.error is again.value
    disk.room = None
    writer.flush()
    assert writer.error is None
    add_steps(writer, range(300, 400))
    writer.close()
    assert_every_step_once_in_order(tmp_path, range(400))


def test_close_on_a_full_disk_raises_and_a_later_close_writes_everything(tmp_path: Path, full_disk: Attach) -> None:
    writer = EventWriter(tmp_path, flush_secs=600)
    disk = full_disk(writer)
    add_steps(writer, range(50))
    disk.room = 0
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.errno == errno.ENOSPC and writer.error is raised.value
    assert writer.closed  # to writes: the values held are the ones close() was given
    with pytest.raises(RuntimeError, match="is closed"):
        writer.add_scalar("loss", 50.0, 50)
    disk.room = None
    writer.close()
    assert writer.error is None and disk.file.closed
    writer.close()  # and closing again does nothing
    assert_every_step_once_in_order(tmp_path, range(50))


def test_the_background_flusher_keeps_the_records_and_reports_the_error(tmp_path: Path, full_disk: Attach) -> None:
    writer = EventWriter(tmp_path, flush_secs=0.05)
    disk = full_disk(writer)
    disk.room = 0
    add_steps(writer, range(100))
    wait_for(lambda: writer.error is not None, "the flusher's error is not exposed on the writer")
    assert isinstance(writer.error, OSError) and writer.error.errno == errno.ENOSPC
    assert "loss" not in read_scalars(tmp_path)
    with pytest.raises(OSError) as raised:  # the next explicit flush raises it: the values are not on disk
        writer.flush()
    assert raised.value.errno == errno.ENOSPC
    add_steps(writer, range(100, 150))
    disk.room = None
    wait_for(lambda: writer.error is None, "the flusher did not write the held values once the disk had room")
    assert_every_step_once_in_order(tmp_path, range(150))  # written by the flusher itself, before close()
    add_steps(writer, range(150, 200))
    writer.close()
    assert_every_step_once_in_order(tmp_path, range(200))


def test_a_full_disk_does_not_keep_the_flusher_busy(tmp_path: Path, full_disk: Attach) -> None:
    writer = EventWriter(tmp_path, flush_secs=0.2)
    disk = full_disk(writer)
    disk.room = 0
    start = time.monotonic()
    add_steps(writer, range(40_000))  # past the backlog limit: every write wakes the flusher
    step = 40_000
    while time.monotonic() - start < 1:
        add_steps(writer, range(step, step + 10))
        step += 10
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    assert disk.calls <= elapsed / 0.2 + 3, "the flusher retries at every write instead of every flush_secs"
    disk.room = None
    writer.close()
    assert_every_step_once_in_order(tmp_path, range(step))


def test_with_flush_secs_zero_the_add_raises_and_the_next_write_catches_up(tmp_path: Path, full_disk: Attach) -> None:
    writer = EventWriter(tmp_path, flush_secs=0)
    disk = full_disk(writer)
    add_steps(writer, range(10))
    disk.room = 0
    with pytest.raises(OSError) as raised:
        writer.add_scalar("loss", 10.0, 10)  # kept: written with the next write that succeeds
    assert writer.error is raised.value
    disk.room = None
    add_steps(writer, range(11, 20))
    assert writer.error is None
    assert_every_step_once_in_order(tmp_path, range(20))  # on disk before close(): every call writes through
    writer.close()


# -- a real full file system ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, where this process may mount one (root on Linux); skipped elsewhere."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=False, timeout=30)  # a file left open


def test_a_real_full_file_system_loses_nothing(small_disk: Path) -> None:
    run_dir, filler = small_disk / "run", small_disk / "filler"
    writer = EventWriter(run_dir, flush_secs=600)
    try:
        add_steps(writer, range(100))
        writer.flush()
        with open(filler, "wb", buffering=0) as stream:
            with pytest.raises(OSError) as full:  # fill the file system to its last byte
                while True:
                    stream.write(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        add_steps(writer, range(100, 3000))  # about 120 kB
        with pytest.raises(OSError) as raised:
            writer.flush()
        assert raised.value.errno == errno.ENOSPC and writer.error is raised.value
        filler.unlink()
        writer.close()
        assert writer.error is None and writer.closed
        assert_every_step_once_in_order(run_dir, range(3000))
    finally:  # whatever failed: the file closed, so that the file system unmounts
        filler.unlink(missing_ok=True)
        writer.close()

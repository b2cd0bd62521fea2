"""iter_record_buffers (numpy-checked framing) against iter_record_batches (a record at a time) and against the
format itself: the same records, the same errors at the same byte offsets, the same warnings."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidviz.writers import EventWriter
from bidviz.writers.record_buffers import iter_record_buffers
from bidviz.writers.records import frame, iter_record_batches, masked_crc


def heads(data: bytes) -> list[int]:
    """The byte offsets of the records of a whole file, walked independently (no checksums)."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack_from("<Q", data, offset)[0]
    return offsets


def reference(file: Path) -> tuple[list[tuple[int, bytes]], str, list[str]]:
    """What a reader must give (records before it ended, the error or "", the warnings), straight from the format:
    each record's length checksum, then its data's, in order; the first bad one ends it, and so does a record cut
    short (with a warning)."""
    data, offset, got = file.read_bytes(), 0, []
    while offset < len(data):
        truncated = [f"{file}: skipped a truncated record at byte offset {offset}"]
        if len(data) - offset < 12:
            return got, "", truncated
        length, length_crc = struct.unpack_from("<QI", data, offset)
        if masked_crc(data[offset : offset + 8]) != length_crc:
            return got, f"{file}: corrupted record at byte offset {offset} (length checksum mismatch)", []
        end = offset + 16 + length
        if end > len(data):
            return got, "", truncated
        if masked_crc(data[offset + 12 : end - 4]) != struct.unpack_from("<I", data, end - 4)[0]:
            return got, f"{file}: corrupted record at byte offset {offset} (data checksum mismatch)", []
        got.append((offset, data[offset + 12 : end - 4]))
        offset = end
    return got, "", []


def new_records(file: Path, **options: int) -> list[tuple[int, bytes]]:
    return [r for buffer in iter_record_buffers(file, **options) for r in buffer.records()]


def old_records(file: Path) -> list[tuple[int, bytes]]:
    return [r for batch in iter_record_batches(file) for r in batch]


def outcome(
    read: Callable[..., Iterable[Any]], file: Path, **options: int
) -> tuple[list[tuple[int, bytes]], str, list[str]]:
    """What `read` gives: (records read before it ended, the error message or "", the warnings)."""
    got: list[tuple[int, bytes]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for records in read(file, **options):
                got.extend(records.records() if hasattr(records, "records") else records)
            error = ""
        except ValueError as e:
            error = str(e)
    return got, error, [str(w.message) for w in caught]


def scalar_file(tmp_path: Path, count: int, tag: str = "loss") -> Path:
    """An event file of `count` scalars (and the file_version record first)."""
    with EventWriter(tmp_path) as writer:
        for step in range(count):
            writer.add_scalar(tag if step % 3 else f"{tag}/other", step * 0.5, step)
    (file,) = tmp_path.glob("*tfevents*")
    return file


def mixed_file(tmp_path: Path) -> Path:
    """Scalars with a few histograms, images and texts among them: records of many lengths, some long."""
    rng = np.random.default_rng(1)
    with EventWriter(tmp_path) as writer:
        for step in range(3000):
            writer.add_scalar("a", float(step), step)
            writer.add_scalar("bb/" + "x" * (step % 7), float(-step), step)
            if step % 97 == 0:
                writer.add_histogram("h", rng.normal(size=50), step)
            if step % 331 == 0:
                writer.add_image("i", rng.uniform(size=(3, 40, 40)), step)
            if step % 53 == 0:
                writer.add_text("t", "note " * (step % 11), step)
    (file,) = tmp_path.glob("*tfevents*")
    return file


@pytest.mark.parametrize("read_size", [1 << 22, 4096, 100, 1])
def test_the_same_records_as_a_record_at_a_time(tmp_path: Path, read_size: int) -> None:
    """Reads of every size down to one byte: records cross reads, and an image is longer than a read."""
    file = mixed_file(tmp_path)
    expected = old_records(file)
    assert [offset for offset, _ in expected] == heads(file.read_bytes())
    assert new_records(file, read_size=read_size) == expected


def test_buffers_name_their_records_and_where_the_next_starts(tmp_path: Path) -> None:
    file = mixed_file(tmp_path)
    buffers = list(iter_record_buffers(file, read_size=1 << 16))
    assert len(buffers) > 3
    offsets = heads(file.read_bytes())
    seen = 0
    for buffer in buffers:
        assert [buffer.record_offset(i) for i in range(len(buffer))] == offsets[seen : seen + len(buffer)]
        seen += len(buffer)
        assert buffer.end == (offsets[seen] if seen < len(offsets) else file.stat().st_size)
    assert seen == len(offsets)


def test_start_at_a_record_boundary(tmp_path: Path) -> None:
    file = mixed_file(tmp_path)
    offsets = heads(file.read_bytes())
    expected = old_records(file)
    for index in (1, 2, len(offsets) // 2, len(offsets) - 1):
        assert new_records(file, start=offsets[index], read_size=1 << 15) == expected[index:]
    assert new_records(file, start=file.stat().st_size) == []


def test_an_empty_file_and_a_file_of_only_its_version_record(tmp_path: Path) -> None:
    empty = tmp_path / "events.out.tfevents.0.empty"
    empty.write_bytes(b"")
    assert outcome(iter_record_buffers, empty) == ([], "", [])
    EventWriter(tmp_path / "run").close()
    (only,) = (tmp_path / "run").glob("*tfevents*")
    got = outcome(iter_record_buffers, only)
    assert got == outcome(iter_record_batches, only)
    assert len(got[0]) == 1 and b"brain.Event:2" in got[0][0][1]


# Where a byte is flipped, relative to the start of a record: in its length, in its length's checksum, at the start
# and end of its data, in its footer.
CORRUPTIONS = {"length": 3, "length checksum": 9, "first data byte": 12, "last data byte": -5, "footer": -2}
REASONS = {"length": "length", "length checksum": "length"}


@pytest.mark.parametrize("where", CORRUPTIONS)
@pytest.mark.parametrize("count", [20, 5000])  # checked by google-crc32c one by one; by numpy's tables
def test_a_corrupted_byte_raises_at_its_record_after_yielding_those_before(
    tmp_path: Path, where: str, count: int
) -> None:
    file = scalar_file(tmp_path, count)
    data = bytearray(file.read_bytes())
    offsets = heads(bytes(data))
    index = len(offsets) * 2 // 3
    record, after = offsets[index], offsets[index + 1]
    shift = CORRUPTIONS[where]
    data[record + shift if shift >= 0 else after + shift] ^= 0x10
    file.write_bytes(bytes(data))
    reason = REASONS.get(where, "data")
    message = f"{file}: corrupted record at byte offset {record} ({reason} checksum mismatch)"
    got, error, caught = outcome(iter_record_buffers, file)
    assert (got, error, caught) == reference(file)
    assert error == message and len(got) == index
    old_got, old_error, _ = outcome(iter_record_batches, file)
    assert old_error == message and old_got == got[: len(old_got)]  # it yields nothing of the read with the error


def test_the_first_of_several_bad_records_is_named(tmp_path: Path) -> None:
    file = scalar_file(tmp_path, 3000)
    data = bytearray(file.read_bytes())
    offsets = heads(bytes(data))
    data[offsets[-5] + 1] ^= 0xFF  # a length: what follows is garbage to the walk
    data[offsets[-40] + 20] ^= 0x01  # data, earlier: named first
    file.write_bytes(bytes(data))
    got, error, caught = outcome(iter_record_buffers, file)
    assert (got, error, caught) == reference(file)
    assert error == f"{file}: corrupted record at byte offset {offsets[-40]} (data checksum mismatch)"
    assert len(got) == len(offsets) - 40


def test_a_huge_length_whose_checksum_is_wrong_is_a_checksum_error_not_a_read(tmp_path: Path) -> None:
    file = scalar_file(tmp_path, 10)
    data = bytearray(file.read_bytes())
    last = heads(bytes(data))[-1]
    data[last : last + 8] = struct.pack("<Q", 1 << 62)
    file.write_bytes(bytes(data))
    assert (
        outcome(iter_record_buffers, file)[1]
        == f"{file}: corrupted record at byte offset {last} (length checksum mismatch)"
    )


@pytest.mark.parametrize("cut", ["inside the header", "inside the data", "inside the footer", "one byte"])
@pytest.mark.parametrize("read_size", [1 << 22, 1000])
def test_a_truncated_last_record_warns_and_keeps_the_rest(tmp_path: Path, cut: str, read_size: int) -> None:
    file = scalar_file(tmp_path, 2000)
    whole = file.read_bytes()
    last = heads(whole)[-1]
    keep = {"inside the header": last + 7, "inside the data": len(whole) - 9, "inside the footer": len(whole) - 1}
    file.write_bytes(whole[: keep.get(cut, last + 1)])
    got, error, caught = outcome(iter_record_buffers, file, read_size=read_size)
    assert (got, error, caught) == reference(file) == outcome(iter_record_batches, file)
    assert caught == [f"{file}: skipped a truncated record at byte offset {last}"]
    assert len(got) == len(heads(whole)) - 1
    quiet = outcome(lambda f: iter_record_buffers(f, warn_truncated=False), file)
    assert quiet == (got, "", [])


def test_the_truncation_warning_points_at_the_caller(tmp_path: Path) -> None:
    file = scalar_file(tmp_path, 5)
    file.write_bytes(file.read_bytes()[:-3])
    with pytest.warns(UserWarning, match=re.escape("skipped a truncated record")) as caught:
        list(iter_record_buffers(file))
    assert caught[0].filename == __file__


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"x" * 28, b"y" * 28, b"z" * 31]),  # lengths many records share: numpy's tables
            st.binary(min_size=200, max_size=1500),
        ),
        max_size=400,
    ),
    repeat=st.integers(1, 8),
    read_size=st.sampled_from([1 << 22, 257, 4096]),
    damage=st.one_of(st.none(), st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7))),
)
def test_random_records_and_damage_read_as_a_record_at_a_time_reads_them(
    tmp_path: Path, payloads: list[bytes], repeat: int, read_size: int, damage: tuple[float, int] | None
) -> None:
    data = bytearray(b"".join(frame(p) for p in payloads * repeat))
    if damage is not None and data:
        position, bit = damage
        data[int(position * len(data))] ^= 1 << bit
    file = tmp_path / "events.out.tfevents.1.random"
    file.write_bytes(bytes(data))
    got, error, caught = outcome(iter_record_buffers, file, read_size=read_size)
    assert (got, error, caught) == reference(file)
    old_got, old_error, old_caught = outcome(iter_record_batches, file)
    assert (old_error, old_caught) == (error, caught) and old_got == got[: len(old_got)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pattern=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    repeat=st.integers(1, 400),
    changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 2000)), max_size=6),
    read_size=st.sampled_from([1 << 22, 3000]),
)
def test_runs_of_repeating_sizes_are_followed_exactly(
    tmp_path: Path, pattern: list[int], repeat: int, changes: list[tuple[float, int]], read_size: int
) -> None:
    """Sizes that repeat with a period (which the walk predicts and confirms with numpy), broken here and there
    by a record of another size, and by the end of a read."""
    sizes = pattern * repeat
    for where, size in changes:
        sizes[int(where * len(sizes))] = size
    file = tmp_path / "events.out.tfevents.1.periodic"
    file.write_bytes(b"".join(frame(bytes([i % 251]) * size) for i, size in enumerate(sizes)))
    assert outcome(iter_record_buffers, file, read_size=read_size) == reference(file)


def test_numpy_crc32c_is_google_crc32c() -> None:
    from bidviz.writers.record_buffers import _crc32c_spans

    rng = np.random.default_rng(7)
    buffer = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for size in (0, 1, 3, 4, 5, 8, 28, 101, 256):
        starts = np.arange(0, len(buffer) - size, 37, dtype=np.int64)
        expected = [google_crc32c.value(buffer[s : s + size]) for s in starts.tolist()]
        assert _crc32c_spans(buffer, starts, size).tolist() == expected, size


def test_without_google_crc32c_the_same_records_and_errors(tmp_path: Path) -> None:
    """The pure-Python CRC32C takes the records numpy's tables do not (long ones, rare lengths)."""
    file = mixed_file(tmp_path)
    data = bytearray(file.read_bytes())
    bad = heads(bytes(data))[-100]
    data[bad + 14] ^= 0x01
    corrupt = tmp_path / "events.out.tfevents.2.corrupt"
    corrupt.write_bytes(bytes(data))
    code = f"""
import sys
sys.modules["google_crc32c"] = None  # makes `import google_crc32c` fail
from bidviz.writers import CRC32C_IMPLEMENTATION
from bidviz.writers.record_buffers import iter_record_buffers
assert CRC32C_IMPLEMENTATION.startswith("pure Python"), CRC32C_IMPLEMENTATION
print(sum(len(b) for b in iter_record_buffers({str(file)!r})))
try:
    list(iter_record_buffers({str(corrupt)!r}))
except ValueError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True, text=True).stdout
    assert out.splitlines() == [
        str(len(old_records(file))),
        f"{corrupt}: corrupted record at byte offset {bad} (data checksum mismatch)",
    ]


@pytest.mark.parametrize("length", [2**62, 2**40, 10**9])
def test_a_crafted_huge_length_is_a_truncated_record_not_an_allocation(tmp_path, length):
    """A header whose length checksum is right but whose length runs far past the file: both readers treat it as
    a record cut short (a warning, the records before it kept), never try to read (allocate) that many bytes."""
    from bidviz.writers import EventWriter, read_scalars
    from bidviz.writers.records import iter_records, masked_crc

    with EventWriter(tmp_path / "run") as writer:
        for i in range(3):
            writer.add_scalar("loss", float(i), i)
    (file,) = (tmp_path / "run").iterdir()
    head = struct.pack("<Q", length)
    with open(file, "ab") as f:
        f.write(head + struct.pack("<I", masked_crc(head)) + b"\0" * 64)
    with pytest.warns(UserWarning, match="truncated"):
        assert [(s, v) for s, _, v in read_scalars(tmp_path / "run")["loss"]] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    with pytest.warns(UserWarning, match="truncated"):
        assert len(list(iter_records(file))) == 4  # the file version and the three values

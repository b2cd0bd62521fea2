"""TFRecord framing for readers of millions of records: the records of each read of a file (a few MB) as one
`RecordBuffer`, the read's bytes and numpy arrays of where each record's data starts and how long it is.

`records.iter_record_batches` checks a record at a time in Python: a header unpack, a slice, a CRC call and a
footer unpack per record. Here Python only follows the chain of lengths, and not even that through runs of records
whose sizes repeat (numpy confirms predicted ones); numpy then checks every header and footer of the read at once:
a table for the lengths' checksums, and CRC32C by tables over all the short records of one length together
(google-crc32c computes one CRC a call, which costs more in calls than in bytes for short records; longer records
and rare lengths still go to it, one by one). Both raise the same errors at the same byte offsets.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from itertools import pairwise

import numpy as np

from bidviz.writers.records import crc32c, read_within

__all__ = ["RecordBuffer", "iter_record_buffers", "view"]

_READ_SIZE = 1 << 22  # a whole event file is never held in memory: image runs reach gigabytes
_LENGTH = struct.Struct("<Q").unpack_from
_MASK_DELTA = np.uint32(0xA282EAD8)
_ONES = np.uint32(0xFFFFFFFF)
# numpy computes the CRCs of the records of one length together when there are at least this many per byte of
# length (below it, its per-step cost outweighs a C call per record), for lengths up to _NUMPY_CRC_MAX bytes.
_NUMPY_CRC_PER_BYTE = 16
_NUMPY_CRC_MAX = 64
# `_walk` follows this many records in Python before it tries predicting the next ones from their sizes (twice as
# many after a failed prediction, up to _STRETCH_MAX), with periods up to _PERIOD_MAX records, _RUN_FIRST at first
# and twice as many each time all are confirmed, up to _RUN_MAX.
_STRETCH = 64
_STRETCH_MAX = 4096
_PERIOD_MAX = 32
_RUN_FIRST = 1 << 10
_RUN_MAX = 1 << 16


class RecordBuffer:
    """Checked records of one read of a file: record i's data is `buffer[starts[i]:starts[i] + sizes[i]]`, and
    `buffer[0]` is at byte `offset` of the file."""

    __slots__ = ("buffer", "offset", "sizes", "starts")

    def __init__(self, buffer: bytes, offset: int, starts: np.ndarray, sizes: np.ndarray) -> None:
        self.buffer, self.offset, self.starts, self.sizes = buffer, offset, starts, sizes

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def end(self) -> int:
        """The byte offset in the file just after the last record (where the next one starts)."""
        return self.offset + int(self.starts[-1]) + int(self.sizes[-1]) + 4 if len(self.starts) else self.offset

    def record_offset(self, i: int) -> int:
        """The byte offset of record i in the file (of its header, as error messages name it)."""
        return self.offset + int(self.starts[i]) - 12

    def records(self, first: int = 0) -> list[tuple[int, bytes]]:
        """(byte offset, data) of records `first` onwards: the form `iter_record_batches` yields."""
        buffer, base = self.buffer, self.offset - 12
        starts, sizes = self.starts[first:].tolist(), self.sizes[first:].tolist()
        return [(base + s, buffer[s : s + z]) for s, z in zip(starts, sizes, strict=True)]


def iter_record_buffers(
    file: str | os.PathLike[str],
    stacklevel: int = 2,
    *,
    start: int = 0,
    warn_truncated: bool = True,
    read_size: int = _READ_SIZE,
) -> Iterator[RecordBuffer]:
    """The records of `file` from byte `start` (a record boundary), both checksums checked, a `RecordBuffer` per
    read of `read_size` bytes (more for a record longer than that); the same contract as
    `records.iter_record_batches`.

    A record cut short at the end of the file ends the iteration, with a warning unless `warn_truncated` is false;
    a checksum mismatch raises ValueError naming the file and the record's byte offset, once the records before it
    in the same read have been yielded.
    """
    name = os.fspath(file)
    with open(name, "rb") as stream:
        if start:
            stream.seek(start)
        buffer, offset, need = b"", start, 0  # the part of a record the last read ended in, its offset, its size
        while True:
            more = read_within(stream, max(read_size, need - len(buffer)))
            if not more:
                if buffer and warn_truncated:
                    warnings.warn(f"{name}: skipped a truncated record at byte offset {offset}", stacklevel=stacklevel)
                return
            buffer = buffer + more if buffer else more
            if len(buffer) < 12:
                need = 12
                continue
            heads, after = _walk(buffer)
            whole = len(heads) - (after > len(buffer))  # only the last record can run past the read
            lengths = view(buffer, "<u8")[heads]
            bad, reason = _first_bad(buffer, heads, lengths, whole)
            if bad is not None:
                if bad:
                    yield RecordBuffer(buffer, offset, heads[:bad] + 12, lengths[:bad].astype(np.int64))
                raise ValueError(f"{name}: corrupted record at byte offset {offset + int(heads[bad])} ({reason})")
            if whole:
                yield RecordBuffer(buffer, offset, heads[:whole] + 12, lengths[:whole].astype(np.int64))
            used = int(heads[whole]) if whole < len(heads) else min(after, len(buffer))
            need = _LENGTH(buffer, used)[0] + 16 if whole < len(heads) else 12
            buffer, offset = buffer[used:], offset + used


def _walk(buffer: bytes) -> tuple[np.ndarray, int]:
    """The positions in `buffer` of the headers of its records (each whose 12 bytes are in it), following the
    lengths from the first; and where the record after the last would start (past the end when a record is cut
    short).

    Runs of records whose sizes repeat with a short period (a loop logging the same tags each step) are followed
    by numpy: the sizes of the last records, repeated, predict where the next ones start, and the lengths read at
    those places confirm them up to the first that differs. The rest is followed in Python, a record at a time."""
    unpack, position, last = _LENGTH, 0, len(buffer) - 12
    found: list[np.ndarray] = []
    heads: list[int] = []
    append = heads.append
    stretch = _STRETCH
    while position <= last:
        for _ in range(stretch):
            append(position)
            position += unpack(buffer, position)[0] + 16
            if position > last:
                break
        else:
            run = _predicted_run(buffer, heads, position)
            if run is not None:
                found += [np.array(heads, dtype=np.int64), run[0]]
                heads.clear()
                position = run[1]
                stretch = _STRETCH if len(run[0]) >= _STRETCH else min(2 * stretch, _STRETCH_MAX)
            else:
                stretch = min(2 * stretch, _STRETCH_MAX)  # an irregular stretch: try again less often
    found.append(np.array(heads, dtype=np.int64))
    return np.concatenate(found) if len(found) > 1 else found[0], position


def _predicted_run(buffer: bytes, heads: list[int], position: int) -> tuple[np.ndarray, int] | None:
    """The headers from `position` on (a record's, after `heads`) while the record sizes repeat those of the last
    `heads` with the shortest period that explains their last 2 periods; and where the record after them starts.
    None when no period explains them, or the next record already differs."""
    recent = [*heads[-2 * _PERIOD_MAX :], position]
    sizes = [b - a for a, b in pairwise(recent)]
    period = next(
        (p for p in range(1, len(sizes) // 2 + 1) if sizes[-1 - p] == sizes[-1] and sizes[-p:] == sizes[-2 * p : -p]),
        0,
    )
    if not period:
        return None
    repeat = np.array(sizes[-period:], dtype=np.int64)
    lengths, last = view(buffer, "<u8"), len(buffer) - 12
    runs: list[np.ndarray] = []
    count = _RUN_FIRST
    while position <= last:  # predictions of `count` records, twice as many each time all are confirmed
        predicted = np.tile(repeat, count // period + 1)[:count]
        ends = position + np.cumsum(predicted)
        starts = np.concatenate([[position], ends[:-1]])
        inside = int(np.searchsorted(starts, last, side="right"))
        confirmed = lengths[starts[:inside]] == (predicted[:inside] - 16).astype(np.uint64)
        run = inside if confirmed.all() else int(np.argmin(confirmed))
        if run:
            runs.append(starts[:run])
            position = int(ends[run - 1])
            repeat = np.roll(repeat, -run)  # the period, from the record after the run on
        if run < count:
            break
        count = min(2 * count, _RUN_MAX)
    if not runs:
        return None
    return np.concatenate(runs) if len(runs) > 1 else runs[0], position


def view(buffer: bytes, dtype: str) -> np.ndarray:
    """`dtype` values starting at every byte of `buffer` (no copy): view[i] is the value at byte i."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((len(buffer) - width + 1,), dtype, buffer, 0, (1,))


def _first_bad(buffer: bytes, heads: np.ndarray, lengths: np.ndarray, whole: int) -> tuple[int | None, str]:
    """The index of the first record whose length checksum (any walked record) or data checksum (the first `whole`)
    is wrong, and which; (None, "") when all are right. After a wrong length the walk read garbage, but only the
    first mismatch is reported, and the garbage lies after it."""
    if not len(heads):
        return None, ""
    words = view(buffer, "<u4")
    bad_heads = np.flatnonzero(_length_crcs(lengths) != words[heads + 8])
    first_head = int(bad_heads[0]) if len(bad_heads) else len(heads)
    checked = min(whole, first_head)  # the data of a record after a wrong length is not a record
    starts, sizes = heads[:checked] + 12, lengths[:checked].astype(np.int64)
    bad_data = np.flatnonzero(_data_crcs(buffer, starts, sizes) != words[starts + sizes])
    if len(bad_data):
        return int(bad_data[0]), "data checksum mismatch"
    if first_head < len(heads):
        return first_head, "length checksum mismatch"
    return None, ""


def _length_crcs(lengths: np.ndarray) -> np.ndarray:
    """The masked CRC32C of each uint64 length's 8 bytes: a table for those below 2**16, computed for the rest."""
    _, low, high, table = _crc_tables()
    crcs: np.ndarray = table[np.minimum(lengths, 0xFFFF)]
    large = np.flatnonzero(lengths > 0xFFFF)
    if len(large):
        crcs[large] = _masked(_crc32c_u64(lengths[large], low, high))
    return crcs


def _data_crcs(buffer: bytes, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The masked CRC32C of each record's data: numpy over the records of each common length, C for the rest."""
    out = np.empty(len(starts), np.uint32)
    if not len(starts):
        return out
    order = np.argsort(sizes)
    sorted_sizes = sizes[order]
    bounds = [0, *(np.flatnonzero(sorted_sizes[1:] != sorted_sizes[:-1]) + 1).tolist(), len(order)]
    for lo, hi in pairwise(bounds):
        rows, size = order[lo:hi], int(sorted_sizes[lo])
        if size <= _NUMPY_CRC_MAX and hi - lo >= _NUMPY_CRC_PER_BYTE * size:
            out[rows] = _crc32c_spans(buffer, starts[rows], size)
        else:
            out[rows] = [crc32c(buffer[s : s + size]) for s in starts[rows].tolist()]
    return _masked(out)


def _masked(crc: np.ndarray) -> np.ndarray:
    """TFRecord's mask of CRCs (`records.masked_crc`, vectorized): rotated right by 15 bits, plus a constant."""
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _MASK_DELTA


_TABLES: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def _crc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CRC32C (Castagnoli, reflected) tables: a byte at a time (256 entries); 4 bytes at a time, split in two 16-bit
    halves (the CRC is linear, so a 32-bit state's step is the XOR of its halves' steps); and the masked CRC of
    every length below 2**16, as a record header holds it."""
    global _TABLES
    if _TABLES is None:
        byte = np.arange(256, dtype=np.uint32)
        for _ in range(8):
            byte = np.where(byte & 1, (byte >> 1) ^ np.uint32(0x82F63B78), byte >> 1).astype(np.uint32)
        low = np.arange(1 << 16, dtype=np.uint32)
        high = low << np.uint32(16)
        for _ in range(4):
            low = byte[low & 0xFF] ^ (low >> 8)
            high = byte[high & 0xFF] ^ (high >> 8)
        _TABLES = byte, low, high, _masked(_crc32c_u64(np.arange(1 << 16, dtype=np.uint64), low, high))
    return _TABLES


def _crc32c_u64(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The (unmasked) CRC32C of the 8 little-endian bytes of each uint64 (`low`, `high`: see `_crc_tables`)."""
    crc = np.full(len(values), _ONES, np.uint32)
    for word in (values & np.uint64(_ONES), values >> np.uint64(32)):
        crc ^= word.astype(np.uint32)
        crc = low[crc & 0xFFFF] ^ high[crc >> 16]
    return crc ^ _ONES


def _crc32c_spans(buffer: bytes, starts: np.ndarray, size: int) -> np.ndarray:
    """The (unmasked) CRC32C of `size` bytes at each of `starts` in `buffer`, all together."""
    byte, low, high, _ = _crc_tables()
    crc = np.full(len(starts), _ONES, np.uint32)
    if not len(starts):
        return crc
    words, octets = view(buffer, "<u4"), np.frombuffer(buffer, np.uint8)
    at = starts.copy()
    for _ in range(size // 4):
        crc ^= words[at]
        crc = low[crc & 0xFFFF] ^ high[crc >> 16]
        at += 4
    for _ in range(size % 4):
        crc = byte[(crc ^ octets[at]) & 0xFF] ^ (crc >> 8)
        at += 1
    return crc ^ _ONES

"""TFRecord framing, as TensorBoard's event files use it: each record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)     (little-endian)

CRC32C comes from google-crc32c (a maintained C implementation, a core dependency). If that package is missing
we fall back to a table-driven pure-Python CRC32C: correct, but about 100 times slower, so `CRC32C_IMPLEMENTATION`
says which one is in use (the benchmark prints it).
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable, Iterator
from typing import BinaryIO

__all__ = ["CRC32C_IMPLEMENTATION", "crc32c", "frame", "iter_record_batches", "iter_records", "masked_crc"]

HEADER = struct.Struct("<QI")  # data length, masked crc32c of those 8 bytes
FOOTER = struct.Struct("<I")  # masked crc32c of the data
_LENGTH = struct.Struct("<Q")
MASK_DELTA = 0xA282EAD8  # TFRecord's mask: the CRC rotated right by 15 bits, plus this, modulo 2**32
M32 = 0xFFFFFFFF
_READ_SIZE = 1 << 22  # a whole event file is never held in memory: image runs reach gigabytes


def _python_crc32c() -> Callable[[bytes], int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)

    def crc32c(data: bytes) -> int:
        crc = M32
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ M32

    return crc32c


def _choose_crc32c() -> tuple[Callable[[bytes], int], str]:
    try:
        import google_crc32c
    except ImportError:
        return _python_crc32c(), "pure Python (google-crc32c is not installed; install it for speed)"
    # google-crc32c itself falls back to Python when its C extension did not build.
    return google_crc32c.value, f"google-crc32c ({google_crc32c.implementation})"


crc32c, CRC32C_IMPLEMENTATION = _choose_crc32c()


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`: the CRC rotated right by 15 bits, plus a constant.

    The writer and the reader call it per record; they earn the call back elsewhere (a cached header is a dict
    lookup in C, the reader checks a known length without a CRC). The writer's scalar path alone (the hottest) has
    the same expression inline. The bits the left shift pushes past 32 vanish in the final mask, so the rotation
    needs no mask of its own.
    """
    crc = crc32c(data)
    return ((crc >> 15 | crc << 17) + MASK_DELTA) & M32


def read_within(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes of `stream`, never more than the file holds from its position: a record's length is
    outside data (a crafted one, its checksum right, must not allocate exabytes)."""
    left = os.fstat(stream.fileno()).st_size - stream.tell()
    return stream.read(max(0, min(size, left)))


class _Headers(dict[int, bytes]):
    """length -> the 12-byte record header for `length` bytes of data, memoized: records of one kind share lengths.
    A dict, so that a known length costs one lookup in C, not a Python call (which the writer spends on
    `masked_crc` instead)."""

    def __missing__(self, length: int) -> bytes:
        packed = _LENGTH.pack(length)
        head = packed + FOOTER.pack(masked_crc(packed))
        if len(self) < 4096:
            self[length] = head
        return head


header: Callable[[int], bytes] = _Headers().__getitem__  # the record header for `length` bytes of data


def frame(data: bytes) -> bytes:
    """One TFRecord holding `data`."""
    return header(len(data)) + data + FOOTER.pack(masked_crc(data))


def iter_records(file: str | os.PathLike[str], stacklevel: int = 2) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) of each record of `file`, both checksums checked (see `iter_record_batches`)."""
    for batch in iter_record_batches(file, stacklevel + 1):
        yield from batch


def iter_record_batches(
    file: str | os.PathLike[str], stacklevel: int = 2, *, start: int = 0, warn_truncated: bool = True
) -> Iterator[list[tuple[int, bytes]]]:
    """Lists of (byte offset, data) of the records of `file` from byte `start` (a record boundary), both checksums
    checked, a list per read of the file (a few MB): one generator step per list, not per record, for readers that
    go through millions.

    A record cut short at the end of the file (a writer killed, or still writing) ends the iteration, with a
    warning unless `warn_truncated` is false (a tail that reads it again once it is whole); a checksum mismatch
    raises ValueError naming the file and the record's byte offset.
    """
    name = os.fspath(file)
    masked, unpack_header, unpack_footer = masked_crc, HEADER.unpack_from, FOOTER.unpack_from
    # Lengths already checked, with their masked CRC: most records of a file share a few lengths, so most headers
    # are checked with one dictionary lookup (no slice, no CRC).
    good_lengths: dict[int, int] = {}
    with open(name, "rb") as stream:
        if start:
            stream.seek(start)
        buffer = b""
        size = position = 0  # of the buffer; of the next record in it
        offset = start  # of buffer[0] in the file
        batch: list[tuple[int, bytes]] = []
        while True:
            if size - position < 12:
                if batch:
                    yield batch
                    batch = []
                buffer, offset, position = buffer[position:] + stream.read(_READ_SIZE), offset + position, 0
                size = len(buffer)
                if size < 12:
                    if buffer and warn_truncated:
                        _warn_truncated(name, offset, stacklevel)
                    return
            length, length_crc = unpack_header(buffer, position)
            if good_lengths.get(length) != length_crc:
                if masked(buffer[position : position + 8]) != length_crc:
                    raise ValueError(
                        f"{name}: corrupted record at byte offset {offset + position} (length checksum mismatch)"
                    )
                if len(good_lengths) < 1024:
                    good_lengths[length] = length_crc
            end = position + length + 16
            if end > size:
                if batch:
                    yield batch
                    batch = []
                buffer, offset, position, end = buffer[position:], offset + position, 0, length + 16
                buffer += read_within(stream, max(_READ_SIZE, end - len(buffer)))
                size = len(buffer)
                if end > size:
                    if warn_truncated:
                        _warn_truncated(name, offset, stacklevel)
                    return
            data = buffer[position + 12 : end - 4]
            if masked(data) != unpack_footer(buffer, end - 4)[0]:
                raise ValueError(
                    f"{name}: corrupted record at byte offset {offset + position} (data checksum mismatch)"
                )
            batch.append((offset + position, data))
            position = end


def _warn_truncated(name: str, offset: int, stacklevel: int) -> None:
    warnings.warn(f"{name}: skipped a truncated record at byte offset {offset}", stacklevel=stacklevel + 2)

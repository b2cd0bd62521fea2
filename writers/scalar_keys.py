"""The records of a `RecordBuffer` grouped by their fast-path key, with numpy: what lets `ScalarDecoder` read a
run's regular scalar events without a Python step per record.

`ScalarDecoder` reads a record with a known key (the bytes between its step and its last 4 bytes) from its wall
time, step and last 4 bytes alone. Here every record with the common lead (wall_time as field 1, a step of 1 to 5
varint bytes as field 2) gets a group number shared by exactly the records with the same key bytes: grouped by
length, then by a 64-bit hash of the key's 8-byte words, then checked byte for byte against one record of the group.
A key only one record of the buffer has, and a record that differs from its group's (a hash collision), are left to
be decoded in full like the rest: that is always right, the fast path only saves time.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from bidviz.writers.record_buffers import RecordBuffer, view

__all__ = ["KeyGroups", "key_groups"]

_HASH = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it mod 2**64 loses nothing


class KeyGroups:
    """`group[i]`: record i's key group (-1: no common lead, a step beyond 5 bytes, longer than the fast path
    takes, a key no other record of the buffer has, or a hash collision); `keys[g]`: group g's key bytes;
    `steps[i]`: record i's step (where group >= 0)."""

    __slots__ = ("group", "keys", "steps")

    def __init__(self, group: np.ndarray, keys: list[bytes], steps: np.ndarray) -> None:
        self.group, self.keys, self.steps = group, keys, steps


def key_groups(records: RecordBuffer, max_size: int, max_keys: int) -> KeyGroups | None:
    """The key groups of the records of at most `max_size` bytes; None past `max_keys` distinct keys (too irregular
    a buffer to be worth grouping)."""
    buffer, starts, sizes = records.buffer, records.starts, records.sizes
    octets = np.frombuffer(buffer, np.uint8)
    group = np.full(len(starts), -1, np.int64)
    steps = np.zeros(len(starts), np.int64)
    rows = np.flatnonzero((sizes > 16) & (sizes <= max_size))
    at = starts[rows]
    lead = (octets[at] == 0x09) & (octets[at + 9] == 0x10)
    rows, at = rows[lead], at[lead]
    # The step's varint: 0x09, 8 bytes of wall time and 0x10 come first. Its size is 1 + the number of leading
    # bytes with the continuation bit; a sixth byte (a step past 2**35, or a negative one) is left to `feed`.
    step_size = np.ones(len(rows), np.int64)
    going = np.ones(len(rows), bool)
    for k in range(5):
        going &= octets[at + 10 + k] >= 0x80
        step_size += going
    # Records of one size and step size have their keys at the same place and of the same length.
    shape = sizes[rows] * 8 + step_size
    usable = ~going & (sizes[rows] - 14 - step_size >= 1)
    rows, shape = rows[usable], shape[usable]
    if not len(rows):
        return KeyGroups(group, [], steps)
    order = np.argsort(shape)
    shape = shape[order]
    bounds = [0, *(np.flatnonzero(shape[1:] != shape[:-1]) + 1).tolist(), len(order)]
    words = view(buffer, "<u8")
    keys: list[bytes] = []
    for lo, hi in pairwise(bounds):
        members = rows[order[lo:hi]]
        size, step_bytes = divmod(int(shape[lo]), 8)
        at = starts[members] + 10
        step = (octets[at] & 0x7F).astype(np.int64)
        for k in range(1, step_bytes):
            step |= (octets[at + k] & 0x7F).astype(np.int64) << (7 * k)
        steps[members] = step
        key_at, key_size = at + step_bytes, size - 14 - step_bytes
        local, first = _same_bytes(words, key_at, key_size)
        if len(keys) + len(first) > max_keys:
            return None
        group[members] = np.where(local >= 0, local + len(keys), -1)
        keys.extend(buffer[a : a + key_size] for a in key_at[first].tolist())
    return KeyGroups(group, keys, steps)


def _same_bytes(words: np.ndarray, at: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For `size` bytes at each of `at`: a number per byte string that more than one has (-1 for a string no other
    has, and for one whose hash another string has), and the index of one string of each number."""
    count = (size + 7) // 8
    columns = [words[at + 8 * k] for k in range(count)]
    spare = 8 * count - size  # bytes after the key in the last word: the value and the footer
    if spare:
        columns[-1] &= np.uint64((1 << (64 - 8 * spare)) - 1)
    digest = columns[0]
    for column in columns[1:]:
        digest = digest * _HASH ^ column
    order = np.argsort(digest)
    ordered = digest[order]
    new_run = np.empty(len(order), bool)
    new_run[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_run[1:])
    run_starts = np.flatnonzero(new_run)
    shared = np.diff(run_starts, append=len(order)) > 1  # a key of one record is read in full: no key to keep
    run = np.cumsum(new_run) - 1
    number = np.cumsum(shared) - 1
    local = np.empty(len(order), np.int64)
    local[order] = np.where(shared[run], number[run], -1)
    first = order[run_starts[shared]]
    if count > 1:  # one word is its own hash; longer keys are compared in full with their group's first
        kept = np.flatnonzero(local >= 0)
        same = np.ones(len(kept), bool)
        for column in columns:
            same &= column[kept] == column[first][local[kept]]
        local[kept[~same]] = -1
    return local, first

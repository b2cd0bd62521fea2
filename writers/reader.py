"""Read event files back, whatever wrote them: tensorboardX, torch, TensorFlow/JAX (`tf.summary`, flax), or us.

`read_scalars` decodes the protobuf wire format itself (no proto classes, so no tensorboard, tensorboardX or torch
import). Most scalar events of a run differ only in wall time, step and value, so once an event has been decoded
in full, the bytes between its step and its value become a key: every later record holding the same bytes is read
with two unpacks and one dictionary lookup. That is sound because identical bytes before the value mean an
identical message structure, with the value's fixed-width field at the very end. Given a whole read of a file at
once (`ScalarDecoder.feed_buffer`), numpy finds which records share a key, and only the others take a Python step.

`read_events` parses every record into an `Event` proto (tensorboard's when installed, else tensorboardX's).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from bidviz.writers.record_buffers import RecordBuffer, iter_record_buffers, view
from bidviz.writers.records import iter_records
from bidviz.writers.scalar_keys import KeyGroups, key_groups

__all__ = ["ScalarDecoder", "event_files", "read_events", "read_scalars"]

PathLike = str | os.PathLike[str]
Point = tuple[int, float, float]  # step, wall_time, value
Series = dict[str, list[Point]]
Layout = tuple[list[Point], Callable[..., tuple[Any, ...]]]  # a key's points list and its value's unpack

_D = struct.Struct("<d").unpack_from
_F = struct.Struct("<f").unpack_from
_I32 = struct.Struct("<i").unpack_from
_I64 = struct.Struct("<q").unpack_from
_HALF = struct.Struct("<e").unpack_from
_FIXED = {"<f": (4, _F), "<d": (8, _D), "<i": (4, _I32), "<q": (8, _I64)}
_LAYOUT_MAX = 1024  # records longer than this (images, histograms) never take the fast path
# Fewer records than this (a tail's poll) go through `feed`: about where numpy's cost per buffer is paid back.
_BUFFER_MIN = 512
_KEYS_MAX = 4096  # key groups per buffer: past this (or past one per 8 records) it is irregular, `feed` reads it
# TensorProto dtype -> (format of one element in tensor_content, the repeated field a value may sit in instead)
_DTYPES = {1: ("<f", 5), 2: ("<d", 6), 3: ("<i", 7), 9: ("<q", 10), 19: ("<e", 13)}


class _Malformed(Exception):
    pass


def read_scalars(path: PathLike) -> Series:
    """Every scalar of a run directory's event files (sorted by name; subdirectories are other runs) or of one
    file, local or at a URL (`s3://...`: copied to a temporary directory first): tag -> [(step, wall_time, value)] in
    file order.

    A scalar is a `simple_value`, or a one-element numeric tensor (float, double, half, int32, int64) of the
    'scalars' plugin (TF2's tf.summary.scalar, flax, torch's new_style), or a 0-d numeric tensor of a tag with no
    plugin. TF2 writes a tag's metadata only with its first value, so the plugin is remembered per tag across the
    run's files. A record cut short at the end of a file is skipped with a warning; a checksum mismatch raises
    ValueError naming the file and the byte offset.
    """
    if _is_url(path):
        with _local_copy(str(path)) as local:
            return read_scalars(local)
    decoder = ScalarDecoder()
    for file in event_files(path):
        for records in iter_record_buffers(file, stacklevel=3):
            decoder.feed_buffer(file, records)
    return decoder.series


@dataclass
class _Walked:
    """What `ScalarDecoder._walk` did with a buffer: where it stopped, the records it decoded in full (in order),
    their points (points list's id -> (the list, record numbers, points)), each key group's layout once known."""

    stop: int
    full: list[int]
    points: dict[int, tuple[list[Point], list[int], list[Point]]]
    layout_of: list[Layout | None]


class ScalarDecoder:
    """The scalars of a run's records, fed in file order a batch at a time (`read_scalars` feeds whole files; a tail
    such as `bidviz.writers.tail.EventTail` feeds what was appended since its last read). `series` grows in place;
    what a tag's plugin is and the fast path's keys are kept between feeds."""

    def __init__(self) -> None:
        self.series: Series = {}
        self._plugin_of: dict[str, str] = {}
        # The fast path's keys, by the width of the value that follows them (a key learned from a record with a
        # 4-byte value must not match a record with 8 bytes after the same bytes).
        self._layouts4: dict[bytes, Layout] = {}
        self._layouts8: dict[bytes, Layout] = {}
        self._clears = 0  # how many times the keys were forgotten (a tag's plugin changed)

    def feed(self, file: str, batch: list[tuple[int, bytes]]) -> None:
        """Decode a batch of (byte offset, data) records of `file` (offsets and file name only name a bad record)."""
        layouts4, layouts8 = self._layouts4, self._layouts8
        for offset, data in batch:
            size = len(data)
            # wall_time (field 1, fixed64) and step (field 2, varint) lead every event that has them; steps
            # below 2**21 are decoded inline, the rest by _lead.
            if size > 16 and data[0] == 0x09 and data[9] == 0x10:
                wall = _D(data, 1)[0]
                byte = data[10]
                if byte < 0x80:
                    step, pos = byte, 11
                elif data[11] < 0x80:
                    step, pos = (byte & 0x7F) | data[11] << 7, 12
                elif data[12] < 0x80:
                    step, pos = (byte & 0x7F) | (data[11] & 0x7F) << 7 | data[12] << 14, 13
                else:
                    wall, step, pos = _lead(data, file, offset)
            else:
                wall, step, pos = _lead(data, file, offset)
            if size <= _LAYOUT_MAX:
                layout = layouts4.get(data[pos:-4])
                if layout is not None:
                    layout[0].append((step, wall, float(layout[1](data, size - 4)[0])))
                    continue
                layout = layouts8.get(data[pos:-8])
                if layout is not None:
                    layout[0].append((step, wall, float(layout[1](data, size - 8)[0])))
                    continue
            for points, point in self._decode(file, offset, data, wall, step, pos):
                points.append(point)

    def feed_buffer(self, file: str, records: RecordBuffer) -> None:
        """Decode the records of one read of `file`, as `feed` would, with numpy doing the per-record work.

        A record is read from its last 4 bytes when its key is known by the time it is reached, as in `feed`:
        the key groups (`scalar_keys`) say which records share a key, so Python steps only from one record to
        decode in full (a key not known yet, a histogram, an image...) to the next, and the points of the rest are
        added per tag at the end, each tag's in file order. A buffer too irregular for that (too many keys, or more
        records to decode in full than not) goes through `feed` instead, from where it turned out so.
        """
        if len(records) < _BUFFER_MIN:
            self.feed(file, records.records())
            return
        groups = key_groups(records, _LAYOUT_MAX, max_keys=min(_KEYS_MAX, len(records) // 8))
        if groups is None or np.count_nonzero(groups.group < 0) > len(records) // 2:
            self.feed(file, records.records())
            return
        walked = self._walk(file, records, groups)
        self._merge(records, groups, walked)
        if walked.stop < len(records):
            self.feed(file, records.records(walked.stop))

    def _walk(self, file: str, records: RecordBuffer, groups: KeyGroups) -> _Walked:
        """Decode in full, in file order, each record whose key is not known when it is reached (as `feed` would
        find it), until the end of the buffer or until these are more than half the records; the points found are
        kept aside for `_merge`."""
        group, keys, layouts4 = groups.group, groups.keys, self._layouts4
        buffer, starts, sizes = records.buffer, records.starts, records.sizes
        walked = _Walked(len(records), [], {}, [None] * len(keys))
        known = [False] * len(keys)
        groups_of: dict[bytes, list[int]] = {}
        for g, key in enumerate(keys):
            groups_of.setdefault(key, []).append(g)

        def learn(key: bytes) -> None:
            layout = layouts4.get(key)
            if layout is not None:
                for g in groups_of.get(key, ()):
                    known[g], walked.layout_of[g] = True, layout

        for key in groups_of:
            learn(key)
        # The records of each group in file order, from begins[e] to ends[e] in `order` for entry e = group + 1
        # (entry 0: the records always decoded in full), and the next one of each not read from its key now.
        order = np.argsort((group + 1).astype(np.uint16), kind="stable")  # a radix sort: keys <= _KEYS_MAX
        ends = np.cumsum(np.bincount(group + 1, minlength=len(keys) + 1)).tolist()
        begins = [0, *ends[:-1]]
        nexts = begins[:]

        def queue_after(row: int) -> list[tuple[int, int]]:
            queue = []
            for entry in range(len(keys) + 1):
                if entry and known[entry - 1]:
                    continue
                lo, hi = begins[entry], ends[entry]
                nexts[entry] = lo + int(np.searchsorted(order[lo:hi], row + 1))
                if nexts[entry] < hi:
                    queue.append((int(order[nexts[entry]]), entry))
            heapq.heapify(queue)
            return queue

        queue = queue_after(-1)
        budget, clears = len(records) // 2, self._clears
        while queue:
            row, entry = heapq.heappop(queue)
            if entry and known[entry - 1]:
                continue  # its key became known: this record and the group's next ones are read from it
            if len(walked.full) == budget:
                walked.stop = row
                break
            walked.full.append(row)
            start, size = int(starts[row]), int(sizes[row])
            data = buffer[start : start + size]
            items, pos = self._one(file, records.offset + start - 12, data)
            for points, point in items:
                found = walked.points.get(id(points))
                if found is None:
                    found = walked.points[id(points)] = (points, [], [])
                found[1].append(row)
                found[2].append(point)
            if self._clears != clears:  # a tag's plugin changed: no key is known any more but what it learned
                clears = self._clears
                known = [False] * len(keys)
                for key in list(layouts4):
                    learn(key)
                queue = queue_after(row)
                continue
            if size <= _LAYOUT_MAX:
                learn(data[pos:-4])
            if not entry or not known[entry - 1]:
                nexts[entry] += 1
                if nexts[entry] < ends[entry]:
                    heapq.heappush(queue, (int(order[nexts[entry]]), entry))
        return walked

    def _merge(self, records: RecordBuffer, groups: KeyGroups, walked: _Walked) -> None:
        """Append the points of the records before `walked.stop`, each tag's in file order: those `_walk` decoded in
        full, and the others', read from their last 4 bytes as their group's layout says."""
        group, layout_of = groups.group, walked.layout_of
        fast = group >= 0
        fast[walked.full] = False
        fast[walked.stop :] = False
        rows = np.flatnonzero(fast)
        lists: list[list[Point]] = []  # the points lists the layouts fill, numbered
        number: dict[int, int] = {}
        list_of = np.zeros(len(layout_of), np.int64)
        ints = np.zeros(len(layout_of), bool)
        for g, layout in enumerate(layout_of):
            if layout is not None:
                list_of[g] = number.setdefault(id(layout[0]), len(lists))
                if list_of[g] == len(lists):
                    lists.append(layout[0])
                ints[g] = layout[1] is _I32
        of_row = group[rows]
        destination = list_of[of_row]
        order = np.argsort(destination.astype(np.uint16), kind="stable")  # each list's records, in file order
        rows, of_row, destination = rows[order], of_row[order], destination[order]
        at = records.starts[rows]
        walls = view(records.buffer, "<f8")[at + 1]
        last = view(records.buffer, "<u4")[at + records.sizes[rows] - 4]
        values = np.where(ints[of_row], last.view("<i4"), last.view("<f4")).astype(np.float64)
        steps = groups.steps[rows]
        bounds = [0, *(np.flatnonzero(destination[1:] != destination[:-1]) + 1).tolist(), len(rows)]
        for lo, hi in pairwise(bounds if len(rows) else []):
            points = lists[int(destination[lo])]
            new = zip(steps[lo:hi].tolist(), walls[lo:hi].tolist(), values[lo:hi].tolist(), strict=True)
            found = walked.points.pop(id(points), None)
            if found is None:
                points.extend(new)
                continue
            _, full_rows, full_points = found
            merged = full_points + list(new)
            sequence = np.argsort(np.concatenate([full_rows, rows[lo:hi]]), kind="stable")
            points.extend([merged[i] for i in sequence.tolist()])
        for points, _, full_points in walked.points.values():
            points.extend(full_points)

    def _one(self, file: str, offset: int, data: bytes) -> tuple[list[tuple[list[Point], Point]], int]:
        """What `feed` does with one record, as (points list, point) pairs, and where the record's key starts."""
        wall, step, pos = _lead(data, file, offset)
        size = len(data)
        if size <= _LAYOUT_MAX:
            layout = self._layouts4.get(data[pos:-4])
            if layout is not None:
                return [(layout[0], (step, wall, float(layout[1](data, size - 4)[0])))], pos
            layout = self._layouts8.get(data[pos:-8])
            if layout is not None:
                return [(layout[0], (step, wall, float(layout[1](data, size - 8)[0])))], pos
        return self._decode(file, offset, data, wall, step, pos), pos

    def _decode(
        self, file: str, offset: int, data: bytes, wall: float, step: int, pos: int
    ) -> list[tuple[list[Point], Point]]:
        """A record decoded in full, as (points list, point) pairs, learning its key when it has one scalar whose
        value ends the record."""
        try:
            values = _event_values(data)
        except _Malformed:
            raise _not_an_event(file, offset) from None
        size = len(data)
        items = []
        for tag, plugin, scalar in values:
            if plugin and self._plugin_of.get(tag) != plugin:
                self._plugin_of[tag] = plugin
                self._layouts4.clear()  # a tag's plugin decides whether its tensors are scalars
                self._layouts8.clear()
                self._clears += 1
            if scalar is None:
                continue
            value, end, fmt = scalar(self._plugin_of.get(tag))
            if value is None:
                continue
            points = self.series.setdefault(tag, [])
            items.append((points, (step, wall, value)))
            if len(values) == 1 and end == size and fmt in _FIXED and size <= _LAYOUT_MAX:
                width, unpack = _FIXED[fmt]
                (self._layouts4 if width == 4 else self._layouts8)[data[pos : size - width]] = (points, unpack)
        return items


def read_events(path: PathLike) -> Iterator[tuple[str, Any]]:
    """(file, Event proto) for every record of a run directory's event files (sorted by name) or of one file."""
    if _is_url(path):
        with _local_copy(str(path)) as local:
            yield from read_events(local)
        return
    Event = _event_class()
    for file in event_files(path):
        for offset, data in iter_records(file, stacklevel=3):
            try:
                event = Event.FromString(data)
            except Exception as error:  # google.protobuf's DecodeError; the checksum was right, so a writer wrote it
                raise ValueError(f"{file}: record at byte offset {offset} is not an Event: {error}") from error
            yield file, event


def _event_class() -> Any:
    # tensorboard's protos import in milliseconds; tensorboardX's package imports torch when it is installed.
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        from tensorboardX.proto.event_pb2 import Event
    return Event


def event_files(path: PathLike) -> list[str]:
    """The event files of a run directory (its own, sorted by name; not its subdirectories'), or [path] for a file."""
    name = os.fspath(path)
    if not os.path.isdir(name):
        return [name]
    with os.scandir(name) as entries:
        names = sorted(entry.name for entry in entries if "tfevents" in entry.name and entry.is_file())
    return [os.path.join(name, n) for n in names]


def _is_url(path: PathLike) -> bool:
    from bidviz.channel import is_url

    return is_url(os.fspath(path))


@contextlib.contextmanager
def _local_copy(url: str) -> Iterator[str]:
    """A run at a URL (`s3://bucket/runs/exp`, its own event files) or one event file there, copied into a temporary
    directory for as long as it is read; FileNotFoundError when it has neither."""
    from bidviz.remote import filesystem

    fs, key = filesystem(url)
    key = key.rstrip("/")
    try:
        infos = fs.ls(key, detail=True, refresh=True)
    except FileNotFoundError:
        infos = []
    files = sorted(
        str(i["name"]) for i in infos if i.get("type") == "file" and "tfevents" in str(i["name"]).rsplit("/", 1)[-1]
    )
    single = not files and "tfevents" in key.rsplit("/", 1)[-1] and fs.isfile(key)
    if not files and not single:
        raise FileNotFoundError(f"{url} holds no event files")
    with tempfile.TemporaryDirectory(prefix="bidviz-read-") as local:
        for name in [key] if single else files:
            fs.get_file(name, os.path.join(local, name.rsplit("/", 1)[-1]))
        yield os.path.join(local, key.rsplit("/", 1)[-1]) if single else local


def _lead(data: bytes, file: str, offset: int) -> tuple[float, int, int]:
    """(wall_time, step, position after them) of an event, the general way."""
    wall, step, pos = 0.0, 0, 0
    try:
        if data[:1] == b"\x09" and len(data) >= 9:
            wall, pos = _D(data, 1)[0], 9
        if data[pos : pos + 1] == b"\x10":
            step, pos = _varint(data, pos + 1)
            if step >= 1 << 63:
                step -= 1 << 64
    except _Malformed:
        raise _not_an_event(file, offset) from None
    return wall, step, pos


def _not_an_event(file: str, offset: int) -> ValueError:
    return ValueError(f"{file}: record at byte offset {offset} is not an Event (malformed protobuf)")


# -- the protobuf wire format, as much of it as scalars need ----------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, a, b) of each field in data[pos:end]: a varint's value as a; else the payload's span."""
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, 0, value, pos
        elif wire == 1:
            yield field, 1, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield field, 2, pos, pos + length
            pos += length
        elif wire == 5:
            yield field, 5, pos, pos + 4
            pos += 4
        else:  # groups: not in any TensorBoard message
            raise _Malformed
        if pos > end:
            raise _Malformed


Scalar = Callable[[str | None], tuple[float | None, int, str]]


def _event_values(data: bytes) -> list[tuple[str, str | None, Scalar | None]]:
    """(tag, plugin named in its metadata, a function of the tag's plugin giving (scalar or None, end of the
    value's bytes, element format)) for each value of the event's summary; [] for other events."""
    summary = None
    for field, wire, a, b in _fields(data, 0, len(data)):
        if field == 5 and wire == 2:
            summary = (a, b)
    if summary is None:
        return []
    values = []
    for field, wire, a, b in _fields(data, *summary):
        if field == 1 and wire == 2:
            values.append(_summary_value(data, a, b))
    return values


def _summary_value(data: bytes, start: int, end: int) -> tuple[str, str | None, Scalar | None]:
    tag: str = ""
    plugin: str | None = None
    scalar: Scalar | None = None
    for field, wire, a, b in _fields(data, start, end):
        if field == 1 and wire == 2:
            tag = data[a:b].decode("utf-8", "replace")
        elif field == 2 and wire == 5:
            scalar = _constant((float(_F(data, a)[0]), b, "<f"))
        elif field == 8 and wire == 2:
            scalar = _tensor_scalar(data, a, b)
        elif field in (3, 4, 5, 6):  # other kinds of value in the oneof
            scalar = None
        elif field == 9 and wire == 2:
            plugin = _plugin_name(data, a, b) or plugin
    return tag, plugin, scalar


def _constant(result: tuple[float | None, int, str]) -> Scalar:
    return lambda _plugin: result  # a simple_value is a scalar whatever the tag's plugin


def _plugin_name(data: bytes, start: int, end: int) -> str | None:
    for field, wire, a, b in _fields(data, start, end):
        if field == 1 and wire == 2:  # plugin_data
            for inner, inner_wire, c, d in _fields(data, a, b):
                if inner == 1 and inner_wire == 2:
                    return data[c:d].decode("utf-8", "replace")
    return None


def _tensor_scalar(data: bytes, start: int, end: int) -> Scalar:
    dtype, dims, content = 0, [], None
    repeated: dict[int, list[tuple[int, int, int]]] = {}
    for field, wire, a, b in _fields(data, start, end):
        if field == 1 and wire == 0:
            dtype = a
        elif field == 2 and wire == 2:
            for dim, dim_wire, c, d in _fields(data, a, b):
                if dim == 2 and dim_wire == 2:
                    size = next((v for f, w, v, _ in _fields(data, c, d) if f == 1 and w == 0), 0)
                    dims.append(size)
        elif field == 4 and wire == 2:
            content = (a, b)
        else:
            repeated.setdefault(field, []).append((wire, a, b))

    def scalar(plugin: str | None) -> tuple[float | None, int, str]:
        if plugin not in (None, "scalars") or dtype not in _DTYPES:
            return None, 0, ""
        if (dims and plugin is None) or any(size != 1 for size in dims):
            return None, 0, ""
        fmt, field = _DTYPES[dtype]
        width = struct.calcsize(fmt)
        if content is not None and content[1] - content[0] >= width:
            return float(struct.unpack_from(fmt, data, content[0])[0]), content[0] + width, fmt
        for wire, a, b in repeated.get(field, []):
            if wire in (1, 5):  # one unpacked float or double
                return float(struct.unpack_from(fmt, data, a)[0]), b, fmt
            if wire == 2 and b > a:  # packed
                if fmt in ("<f", "<d"):
                    return float(struct.unpack_from(fmt, data, a)[0]), a + width, fmt
                value, after = _varint(data, a)
                return _from_varint(value, fmt), after, ""
            if wire == 0:
                return _from_varint(a, fmt), b, ""
        return 0.0, 0, ""  # a TensorProto with no values is all zeros

    return scalar


def _from_varint(value: int, fmt: str) -> float:
    if fmt == "<e":  # half_val holds float16 bit patterns
        return float(_HALF(struct.pack("<H", value & 0xFFFF))[0])
    return float(value - (1 << 64) if value >= 1 << 63 else value)

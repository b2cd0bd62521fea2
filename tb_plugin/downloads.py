"""`GET data` and `GET tags` without re-reading a run per request: per run, an `EventTail` (bidviz.writers.tail) that
reads only what the event files gained since the last request, and per (tag, format) the encoded body, to which only
the new points are encoded and appended. A repeat download of an unchanged series is a stat or two per event file.
An event file that shrank was rewritten, not appended to: the run is read anew, so an answer is always what a full
read of the files gives.

Memory is bounded: at most MAX_RUNS runs and MAX_POINTS points are kept (the least recently used run goes first),
and a run nobody asked about for IDLE_SECONDS is dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bidviz import protocol
from bidviz.series import Points

__all__ = ["Downloads", "encode_points"]

MAX_RUNS = 16
MAX_POINTS = 4_000_000
IDLE_SECONDS = 600.0
_CHUNK = 65_536  # points encoded at a time

_JSON_POINT = '{"step":%d,"wall_time":%r,"value":%r}'.__mod__
_CSV_POINT = "%d,%r,%r\n".__mod__
CSV_HEAD = b"step,wall_time,value\n"


def encode_points(points: Points, fmt: str) -> bytes:
    """Points as the items of a JSON array (comma-separated, no brackets) or as CSV rows, exactly as `point_dicts`
    with `protocol.dumps`, and `series.to_csv`, write them (floats in full, by repr), a chunk at a time."""
    out = []
    for start in range(0, len(points), _CHUNK):
        chunk = points[start : start + _CHUNK]
        if fmt == "csv":
            out.append("".join(map(_CSV_POINT, chunk)).encode())
            continue
        text = ",".join(map(_JSON_POINT, chunk))
        if "nan" in text or "inf" in text:  # a non-finite value or time: JSON holds it as a string ("NaN")
            text = ",".join(_JSON_POINT((s, w, v)) if _finite(w, v) else _json_point(s, w, v) for s, w, v in chunk)
        out.append(text.encode())
    return (b"" if fmt == "csv" else b",").join(out)


def _finite(*values: float) -> bool:
    return all(v - v == 0.0 for v in values)


def _json_point(step: int, wall_time: float, value: float) -> str:
    return protocol.dumps({"step": step, "wall_time": wall_time, "value": protocol.to_json_value(value)}).decode()


@dataclass
class _Body:
    count: int  # points encoded
    data: bytes


@dataclass
class _Run:
    tail: Any  # bidviz.writers.tail.EventTail
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = 0.0
    points: int = 0
    bodies: dict[tuple[str, str, str], _Body] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # of the event files, at the last poll


class Downloads:
    """The series of the runs asked about, kept between requests and brought up to date at each."""

    def __init__(
        self, max_runs: int = MAX_RUNS, max_points: int = MAX_POINTS, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.max_runs, self.max_points, self.idle_seconds = max_runs, max_points, idle_seconds
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float, float]]]:
        """Every scalar series of the run, up to date (ValueError for a corrupt record, OSError when unreadable).
        The lists are the cache's own: read them, do not change them."""
        entry = self._entry(os.fspath(run_dir))
        with entry.lock:
            return self._poll(entry)

    def body(self, run_dir: str | os.PathLike[str], run: str, tag: str, fmt: str) -> bytes | None:
        """The download of one series (JSON `{"run", "tag", "points"}` or CSV `step,wall_time,value`), or None when
        the run has no such series."""
        entry = self._entry(os.fspath(run_dir))
        with entry.lock:
            points = self._poll(entry).get(tag)
            if points is None:
                return None
            key = (run, tag, fmt)
            cached = entry.bodies.get(key)
            if cached is not None and cached.count == len(points):
                return cached.data
            if cached is None or cached.count > len(points):  # new, or the file was rewritten
                head = CSV_HEAD if fmt == "csv" else _json_head(run, tag)
                cached = entry.bodies[key] = _Body(0, head + (b"" if fmt == "csv" else b"]}"))
            new = encode_points(points[cached.count :], fmt)
            if fmt == "csv":
                cached.data += new
            else:
                sep = b"," if cached.count else b""
                cached.data = cached.data[:-2] + sep + new + b"]}"
            cached.count = len(points)
            return cached.data

    def _poll(self, entry: _Run) -> dict[str, list[tuple[int, float, float]]]:
        sizes = _sizes(entry.tail.run_dir)
        if any(sizes.get(f, 0) < size for f, size in entry.sizes.items()):  # rewritten, not appended to: read anew
            entry.tail, entry.bodies = type(entry.tail)(entry.tail.run_dir), {}
        entry.sizes = sizes
        entry.tail.poll()
        series: dict[str, list[tuple[int, float, float]]] = entry.tail.series
        entry.points = sum(len(p) for p in series.values())
        self._trim()
        return series

    def _entry(self, run_dir: str) -> _Run:
        from bidviz.writers.tail import EventTail

        now = time.monotonic()
        with self._lock:
            for key in [k for k, e in self._runs.items() if now - e.used > self.idle_seconds]:
                del self._runs[key]
            entry = self._runs.get(run_dir)
            if entry is None:
                entry = self._runs[run_dir] = _Run(EventTail(run_dir))
            self._runs.move_to_end(run_dir)
            entry.used = now
            return entry

    def _trim(self) -> None:
        """Drop the least recently used runs past the bounds (never the one just used: it is last)."""
        with self._lock:
            while len(self._runs) > 1 and (
                len(self._runs) > self.max_runs or sum(e.points for e in self._runs.values()) > self.max_points
            ):
                self._runs.popitem(last=False)


def _sizes(run_dir: str) -> dict[str, int]:
    from bidviz.writers.reader import event_files

    out = {}
    try:
        files = event_files(run_dir) if os.path.isdir(run_dir) else []
    except OSError:  # removed while listed
        return out
    for file in files:
        try:
            out[file] = os.stat(file).st_size
        except FileNotFoundError:
            continue
    return out


def _json_head(run: str, tag: str) -> bytes:
    head = protocol.dumps({"run": run, "tag": tag, "points": []})
    return head[: -len(b"[]}")] + b"["

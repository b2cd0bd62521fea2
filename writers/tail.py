"""Follow a run's event files as they grow: each `EventTail.poll` decodes only the records appended since the last.

A live chart or a repeated download must not re-read a whole event file per request: the tail keeps, per file, the
offset after its last whole record, and one `ScalarDecoder` whose series hold every point read so far. A record cut
short (the writer is in the middle of it) is left for the next poll, silently; a new file of the run (a restarted
writer, a second writer) is picked up at the next poll. A file that shrank (replaced, not appended to) is read again
from its start, its old points kept: event files are append-only, so that only happens when someone rewrote one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bidviz.writers.reader import ScalarDecoder, Series, event_files
from bidviz.writers.record_buffers import iter_record_buffers

__all__ = ["EventTail", "TailUpdate"]


@dataclass
class TailUpdate:
    """What one poll found: the new points of each tag (in file order), and the tags seen for the first time."""

    points: Series = field(default_factory=dict)
    new_tags: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.points)


class EventTail:
    """The scalars of one run directory (its own event files, not its subdirectories'), read incrementally."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = os.fspath(run_dir)
        self.decoder = ScalarDecoder()
        self._offsets: dict[str, int] = {}  # file -> byte offset after its last whole record
        self._sizes: dict[str, int] = {}  # file -> its size at the last poll (an unchanged size is not re-opened)

    @property
    def series(self) -> Series:
        """Every point read so far: tag -> [(step, wall_time, value)]."""
        return self.decoder.series

    def poll(self) -> TailUpdate:
        """Read what the event files gained since the last poll. ValueError names a corrupt record's file and
        offset (the points before it are kept, and the next poll tries that record again)."""
        series = self.decoder.series
        before = {tag: len(points) for tag, points in series.items()}
        try:
            files = event_files(self.run_dir) if os.path.isdir(self.run_dir) else []
        except (FileNotFoundError, NotADirectoryError):  # removed while listed
            files = []
        for file in files:
            try:
                size = os.stat(file).st_size
            except FileNotFoundError:
                continue
            if size == self._sizes.get(file):
                continue
            start = self._offsets.get(file, 0)
            if size < start:
                start = 0  # rewritten, not appended to
            for records in iter_record_buffers(file, start=start, warn_truncated=False):
                self.decoder.feed_buffer(file, records)
                self._offsets[file] = records.end
            self._offsets.setdefault(file, start)
            self._sizes[file] = size
        update = TailUpdate()
        for tag, points in series.items():
            seen = before.get(tag)
            if seen is None:
                update.new_tags.append(tag)
                seen = 0
            if len(points) > seen:
                update.points[tag] = points[seen:]
        return update

"""`StoreWriter`: TensorBoard event files for a run on an object store (`s3://...`, any fsspec URL).

Object stores have no append, so the events are written to a local file by an `EventWriter` and that file is
uploaded whole (one PUT) at each `flush()`, which the Bridge calls at most every `flush_secs` while it writes.
TensorBoard reads a growing object as it reads a growing file: each upload holds the last one as its prefix, so
a reader resumes at its byte offset. To bound what one flush uploads, the writer rolls over to a new file once the
current one holds ROLL_BYTES: the new file (named later, so TensorBoard moves on to it) reaches the store only
after the old one's last upload, and TensorBoard reads an old file to its end before it moves on.

The training thread never waits for the store: uploads happen in `flush()` (the Bridge's mailroom thread).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

from bidviz.writers.event_writer import EventWriter

ROLL_BYTES = 4 * 1024 * 1024  # per-flush upload is at most about this much (env BIDVIZ_EVENT_ROLL_BYTES)


def roll_bytes() -> int:
    try:
        return max(1, int(os.environ.get("BIDVIZ_EVENT_ROLL_BYTES", ROLL_BYTES)))
    except ValueError:
        return ROLL_BYTES


class StoreWriter:
    """An `EventWriter` whose files live at `url`: written locally, uploaded at each flush, rolled at ROLL_BYTES."""

    def __init__(self, url: str, flush_secs: float = 1.0) -> None:
        from bidviz.remote import filesystem

        self.url = url.rstrip("/")
        self.fs, self._base = filesystem(self.url)
        self.flush_secs = flush_secs
        self.roll_bytes = roll_bytes()
        self._local = tempfile.mkdtemp(prefix="bidviz-events-")
        self._lock = threading.Lock()  # one flush at a time
        self._inner = EventWriter(self._local, flush_secs=flush_secs)
        self._started = time.time()
        self._retiring: EventWriter | None = None
        self._uploaded: dict[str, int] = {}  # local path -> size uploaded
        self.uploads = 0  # PUTs made, and bytes sent: for benchmarks and state
        self.uploaded_bytes = 0

    @property
    def run_dir(self) -> str:
        return self.url

    @property
    def path(self) -> str:
        """Where the current file goes on the store."""
        return self._key(self._inner.path)

    def __getattr__(self, name: str) -> Any:  # add_scalar, add_histogram, ...: the current file's writer
        if name.startswith("add_"):
            return getattr(self._inner, name)
        raise AttributeError(name)

    def flush(self) -> None:
        """Write what is pending to the local file and upload it if it grew; roll over past `roll_bytes`."""
        with self._lock:
            if self._retiring is not None:  # rolled at the last flush: no thread is still inside a call on it now
                self._retiring.close()
                self._upload(self._retiring.path)
                self._drop(self._retiring.path)
                self._retiring = None
            self._inner.flush()
            self._upload(self._inner.path)
            if os.path.getsize(self._inner.path) >= self.roll_bytes and int(time.time()) > int(self._started):
                # The new file's name sorts after the old one's (a later second), so TensorBoard moves on to it.
                self._retiring, self._inner = self._inner, EventWriter(self._local, flush_secs=self.flush_secs)
                self._started = time.time()

    def close(self) -> None:
        with self._lock:
            for writer in (self._retiring, self._inner):
                if writer is not None and not writer.closed:
                    writer.close()
                    self._upload(writer.path)
            self._retiring = None
        shutil.rmtree(self._local, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def error(self) -> OSError | None:
        return self._inner.error

    def _key(self, local: str) -> str:
        return f"{self._base}/{os.path.basename(local)}"

    def _upload(self, local: str) -> None:
        size = os.path.getsize(local)
        if self._uploaded.get(local) == size:
            return
        with open(local, "rb") as f:
            data = f.read()
        self.fs.pipe_file(self._key(local), data)
        self._uploaded[local] = len(data)
        self.uploads += 1
        self.uploaded_bytes += len(data)

    def _drop(self, local: str) -> None:
        self._uploaded.pop(local, None)
        try:
            os.unlink(local)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"StoreWriter({self.url!r}, flush_secs={self.flush_secs})"


__all__ = ["ROLL_BYTES", "StoreWriter"]

"""`EventWriter`: standard TensorBoard event files, written fast.

A write encodes its event's bytes (`summaries`), frames them as a TFRecord and appends the record to an in-memory
list: no protobuf objects, no queue, no thread hand-off. A daemon thread writes the list to the file at most
`flush_secs` after the first record in it; `flush()`, `close()`, garbage collection and normal interpreter exit
(`weakref.finalize`, which keeps no reference to the writer) write it too.

Records leave the list only once the file has them. A write that fails (a full disk) keeps them, in order, with the
count of their bytes a short write already put in the file: the next flush writes the rest, and nothing twice.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from bidviz.writers import records, summaries

__all__ = ["EventWriter"]

_file_ids = itertools.count()
_WALL = struct.Struct("<Bd")  # the wall_time key (field 1, fixed64) and the double
# Past these a write wakes the flusher rather than leave the backlog for up to flush_secs. Scalars count records
# (cheaper than bytes on the fast path; a scalar record is about 40 bytes), the other kinds bytes.
_MAX_PENDING_RECORDS = 1 << 15
_MAX_PENDING_BYTES = 1 << 22
_MAX_KEPT_TAGS = 4096  # add_scalar's scalar_writer per tag, about 1 KB each


@functools.cache
def _scalar_packs(head_size: int) -> tuple[tuple[Callable[..., bytes], Callable[..., bytes], bytes], ...]:
    """For a scalar event whose bytes after the step (`summaries.scalar_head`) are `head_size` long, per width of the
    step's varint (1, 2, 3 bytes): the event's pack (wall time key and double, step key and bytes, head, float), the
    record's pack (header, event, masked CRC) and the record's header. Shared by every tag of that size."""
    packs = []
    for width in (1, 2, 3):
        size = 9 + 1 + width + head_size + 4
        event = struct.Struct(f"<Bd{1 + width}B{head_size}sf").pack
        packs.append((event, struct.Struct(f"<12s{size}sI").pack, records.header(size)))
    return tuple(packs)


def _scalar_event(head: bytes, value: float, step: int, wall: float) -> bytes:
    """A one-scalar event, the general way: any step, any wall time, any value `float()` takes (past float32's
    range: an infinity, as protobuf stores it)."""
    data = _WALL.pack(9, wall) if wall else b""  # a zero wall_time is a proto3 default: not written
    if step:
        data += b"\x10" + summaries.varint(summaries.checked_step(step))
    return data + head + summaries.pack_float(float(value))


class _Sink:
    """The file, the pending records and the flusher thread: everything but the writer itself, so that the
    thread and the finalizer can hold it while the writer stays collectable.

    No lock on the write path: writers only append to `pending` and the one flush at a time (`io_lock`) takes
    records from its front, each a single list operation, atomic in CPython (with or without the GIL). A write
    racing with close() may then be dropped instead of raising; it could not have been written either way.

    A flush that fails raises its OSError to its caller (the flusher thread keeps it in `error`), and leaves the
    records in `pending`; `closed` then refuses new records, but the file stays open until a flush writes them.
    """

    def __init__(self, path: str, flush_secs: float) -> None:
        self.path = path
        self.flush_secs = flush_secs
        self.io_lock = threading.Lock()  # one flush at a time, so records reach the file in order
        self.pending: list[bytes] = []
        self.pending_bytes = 0  # of the non-scalar records: only a hint for when to wake the flusher early
        self.closed = False  # to new records; the file closes once the records it was given are written
        self.written = 0  # bytes of the front of `pending` already in the file: a write the disk cut short
        self.error: OSError | None = None  # of the last flush, while the records it could not write are pending
        self.wake = threading.Event()
        # Unbuffered: each write says how many bytes reached the file, so a retry after a short write repeats none.
        self.file = open(path, "xb", buffering=0)  # noqa: SIM115 -- owned by the sink, closed by the last flush
        if flush_secs > 0:
            name = f"bidviz-flush {os.path.basename(path)}"
            threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while not self.file.closed:
            self.wake.wait(self.flush_secs)
            self.wake.clear()
            try:
                self.flush()
            except OSError:
                # Kept in `error` with the records; flush() and close() raise it while it lasts. Retry in flush_secs,
                # not at each wake-up: past the backlog limit every write wakes this thread, and the disk is full.
                time.sleep(self.flush_secs)
                self.wake.set()

    def flush(self) -> None:
        with self.io_lock:
            self._drain()
            # After close(), the flush that writes the last records closes the file (if a record came in meanwhile,
            # close()'s own flush, which follows, writes it first).
            if self.closed and not self.pending and not self.file.closed:
                self.file.close()

    def close(self) -> None:
        self.closed = True
        self.flush()
        self.wake.set()

    def _drain(self) -> None:  # with io_lock held
        pending = self.pending
        count = len(pending)
        if not count or self.file.closed:
            return
        data = memoryview(b"".join(pending[:count]))
        written, write = self.written, self.file.write
        try:
            while written < len(data):
                wrote = write(data[written:])  # unbuffered: less than asked when the disk fills up
                if not wrote:  # never from a file, but retrying it here would hold io_lock for ever
                    raise OSError(errno.EIO, f"{self.path}: the file accepted no bytes")
                written += wrote
        except OSError as error:
            self.written, self.error = written, error
            raise
        del pending[:count]
        self.written = self.pending_bytes = 0
        self.error = None


class EventWriter:
    """Writes one TensorBoard event file in `run_dir` (created if missing), named as TensorBoard names its own.

    Every method may be called from any thread. Values are on disk within `flush_secs` (0: at once, at every
    call), after `flush()` or `close()`, and at normal interpreter exit even without `close()`.
    Tags are kept exactly as given (no renaming, no sub-runs).

    When the disk refuses a write (full: ENOSPC), the values stay in memory, in order, and `error` holds the
    OSError; `flush()` and `close()` raise it for as long as the disk refuses them (with `flush_secs=0`, so does
    the call that added a value), and the next flush that succeeds writes them all, each once.
    """

    def __init__(self, run_dir: str | os.PathLike[str], flush_secs: float = 1.0, filename_suffix: str = "") -> None:
        self.run_dir = os.fspath(run_dir)
        if "://" in self.run_dir and not self.run_dir.startswith("file://"):  # else: a local folder named "s3:"
            raise ValueError(
                f"EventWriter writes local files; {self.run_dir!r} is a URL: use "
                "bidviz.writers.store.StoreWriter(url) (or a Bridge on the URL, which makes one)"
            )
        os.makedirs(self.run_dir, exist_ok=True)
        name = "events.out.tfevents.%010d.%s.%d.%d%s" % (  # noqa: UP031 -- TensorBoard's own pattern
            time.time(),
            socket.gethostname(),
            os.getpid(),
            next(_file_ids),
            filename_suffix,
        )
        self.path = os.path.join(self.run_dir, name)
        self.flush_secs = float(flush_secs)
        sink = self._sink = _Sink(self.path, self.flush_secs)
        self._pending = sink.pending
        self._sync = self.flush_secs <= 0
        self._scalars: dict[str, Callable[..., None]] = {}  # tag -> its scalar_writer
        self._finalizer = weakref.finalize(self, sink.close)
        self._append(records.frame(summaries.file_version_event()))
        sink.flush()  # the file is complete from the start, so TensorBoard lists the run at once

    # -- the fast path ----------------------------------------------------------------------------------------------

    def add_scalar(self, tag: str, value: float, step: int | None = 0, walltime: float | None = None) -> None:
        """One scalar (a `simple_value`, as tensorboardX and torch write it). NaN and infinities are kept."""
        write = self._scalars.get(tag)
        if write is None:
            if len(self._scalars) >= _MAX_KEPT_TAGS:  # a tag per sample or per step: memory stays bounded
                self._scalars.clear()
            write = self._scalars[tag] = self.scalar_writer(tag)
        write(value, step, walltime)

    def scalar_writer(self, tag: str) -> Callable[..., None]:
        """A function `write(value, step=0, walltime=None)` that writes `tag`'s scalar as `add_scalar` does, with
        everything that depends only on the tag made once: for a caller that writes one tag again and again (the
        Bridge's metrics; `add_scalar` keeps one per tag).

        The event's bytes are built by hand and test_event_writer checks them against protobuf's serialization byte
        for byte. For a step of 1 to 3 varint bytes (1 to 2**21 - 1) the event is one `struct` pack and the record
        another: the event's length, and so the record's header, only depends on the step's width. Other steps, a
        wall time of 0 (a proto3 default: not written) and values `struct` does not take as they are (an int past
        float32, a string) go the general way, which writes what protobuf would.
        """
        head = summaries.scalar_head(tag)
        (d1, r1, h1), (d2, r2, h2), (d3, r3, h3) = _scalar_packs(len(head))
        sink, pending, sync, run_dir = self._sink, self._pending, self._sync, self.run_dir
        now, crc32c, frame, delta, m32 = time.time, records.crc32c, records.frame, records.MASK_DELTA, records.M32

        def write(value: float, step: int | None = 0, walltime: float | None = None) -> None:
            if step.__class__ is not int:
                step = 0 if step is None else int(step)  # type: ignore[call-overload]
            wall = now() if walltime is None else float(walltime)
            try:
                if not 0 < step < 0x200000 or not wall:
                    raise OverflowError  # the general way
                if step < 0x80:
                    data = d1(9, wall, 0x10, step, head, value)
                    pack, header = r1, h1
                elif step < 0x4000:
                    data = d2(9, wall, 0x10, step & 0x7F | 0x80, step >> 7, head, value)
                    pack, header = r2, h2
                else:
                    data = d3(9, wall, 0x10, step & 0x7F | 0x80, step >> 7 & 0x7F | 0x80, step >> 14, head, value)
                    pack, header = r3, h3
                crc = crc32c(data)  # masked as `records.masked_crc` does: rotated right by 15, plus a constant
                record = pack(header, data, ((crc >> 15 | crc << 17) + delta) & m32)
            except (OverflowError, struct.error):
                record = frame(_scalar_event(head, value, step, wall))
            if sink.closed:
                raise RuntimeError(f"the EventWriter for {run_dir!r} is closed")
            pending.append(record)
            if sync:
                sink.flush()
            elif len(pending) > _MAX_PENDING_RECORDS:
                sink.wake.set()

        return write

    # -- everything else --------------------------------------------------------------------------------------------

    def add_scalars(
        self, main_tag: str, values: Mapping[str, float], step: int | None = 0, walltime: float | None = None
    ) -> None:
        """Several scalars in one event, tagged `main_tag/key`, all in this run (tensorboardX and torch would make
        one sub-run, with a file writer of its own, per key)."""
        prefix = f"{main_tag}/" if main_tag else ""
        self._add(
            b"".join(summaries.scalar_value(prefix + key, value) for key, value in values.items()), step, walltime
        )

    def add_histogram(self, tag: str, values: Any, step: int | None = 0, walltime: float | None = None) -> None:
        """A histogram of a numpy array, torch tensor or sequence, with TensorFlow's default buckets."""
        self._add(summaries.histogram_value(tag, values), step, walltime)

    def add_text(self, tag: str, text: str, step: int | None = 0, walltime: float | None = None) -> None:
        """Text (markdown) for the text plugin, under `tag` itself."""
        self._add(summaries.text_value(tag, text), step, walltime)

    def add_image(
        self,
        tag: str,
        array: Any,
        step: int | None = 0,
        dataformats: str = "CHW",
        walltime: float | None = None,
    ) -> None:
        """A PNG image from an H×W, H×W×C or C×H×W array (C = 1, 3 or 4): uint8 as is, floats in [0, 1] scaled to
        0-255, other floats min-max scaled."""
        self._add(summaries.image_value(tag, array, dataformats), step, walltime)

    def add_hparams(
        self,
        hparams: Mapping[str, summaries.HParamValue],
        metrics: Iterable[str] | Mapping[str, float] = (),
        step: int | None = 0,
    ) -> None:
        """This run's hyperparameters as an HParams session (experiment and session start info), in this run.

        `metrics` names the dashboard's metric columns; given as a mapping, its values are also written as scalars
        at `step`. Changing values are best logged as scalars (`hparams/<name>`) in the same run.
        """
        metric_tags = list(metrics)
        self._add(b"".join(summaries.hparams_values(hparams, metric_tags)), 0, None)
        if isinstance(metrics, Mapping):
            for tag, value in metrics.items():
                self.add_scalar(tag, value, step)

    def add_hparams_session(self, hparams: Mapping[str, summaries.HParamValue], metric_tags: Iterable[str]) -> None:
        """The `bidviz.writers.Writer` name for `add_hparams`."""
        self.add_hparams(hparams, metric_tags)

    def flush(self) -> None:
        """Write everything added so far to the file (the operating system's cache; no fsync)."""
        self._sink.flush()

    def close(self) -> None:
        """Flush and close the file; later writes raise RuntimeError. Closing again does nothing, unless the disk
        refused the values: then close() raised its OSError, and a later flush() or close() writes them."""
        self._sink.close()
        self._finalizer.detach()  # kept until then: the values still get their chance at interpreter exit

    @property
    def closed(self) -> bool:
        return self._sink.closed

    @property
    def error(self) -> OSError | None:
        """The OSError of the last write to the file (e.g. ENOSPC) while values it could not write are held in
        memory; None once a flush has written them (the flusher thread retries every `flush_secs`)."""
        return self._sink.error

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventWriter({self.path!r}, flush_secs={self.flush_secs}{', closed' if self.closed else ''})"

    def _add(self, values: bytes, step: int | None, walltime: float | None) -> None:
        self._append(records.frame(summaries.event(values, 0 if step is None else int(step), walltime)))

    def _append(self, record: bytes) -> None:
        sink = self._sink
        if sink.closed:
            raise RuntimeError(f"the EventWriter for {self.run_dir!r} is closed")
        self._pending.append(record)
        sink.pending_bytes += len(record)
        if self._sync:
            sink.flush()
        elif sink.pending_bytes > _MAX_PENDING_BYTES or len(self._pending) > _MAX_PENDING_RECORDS:
            sink.wake.set()

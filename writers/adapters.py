"""One small writer protocol for the Bridge, and adapters over our EventWriter and tensorboardX, torch and tf.summary
writers.

Summaries are encoded once, as bytes (`summaries`), whatever the writer. A framework is never imported here to find
out whether an object is its writer: such a writer can only exist once its module is loaded, so it is looked up in
`sys.modules`; the adapter for it then imports what it needs. Never tensorboard itself.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bidviz import compat
from bidviz.channel import is_url
from bidviz.writers import summaries
from bidviz.writers.event_writer import EventWriter
from bidviz.writers.summaries import HParamValue, encode_png, image_to_uint8_hwc, to_numpy

__all__ = ["HParamValue", "Writer", "as_writer", "encode_png", "image_to_uint8_hwc", "to_numpy"]


class Writer(Protocol):
    """What the Bridge writes through: one run directory, one thread writing, flush() from any thread."""

    @property
    def run_dir(self) -> str | None: ...

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def add_histogram(self, tag: str, values: Any, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def add_image(self, tag: str, array: Any, step: int, dataformats: str) -> None: ...

    def add_hparams_session(self, hparams: Mapping[str, HParamValue], metric_tags: Sequence[str]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def as_writer(obj: Any = None, run_dir: str | os.PathLike[str] | None = None, flush_secs: float = 1.0) -> Writer:
    """Return a `Writer` for `obj`: None (a new `EventWriter` in `run_dir`, owned: close() closes it), an
    `EventWriter`, a tensorboardX, torch or tf.summary writer (wrapped; the user keeps ownership, so close() only
    flushes), or an object that already is a Writer.

    Whatever the wrapped writer's own setting, what goes through the adapter is on disk within `flush_secs`.
    """
    if obj is None:
        if run_dir is None:
            raise ValueError("as_writer() needs run_dir when no writer is given")
        if is_url(run_dir):
            from bidviz.writers.store import StoreWriter  # a run on an object store: fsspec, only when asked for

            return StoreWriter(run_dir, flush_secs=flush_secs)  # type: ignore[return-value]
        return EventWriter(run_dir, flush_secs=flush_secs)
    if isinstance(obj, EventWriter):
        return _EventWriterAdapter(obj, run_dir=_same_dir(obj.run_dir, run_dir), flush_secs=flush_secs)
    if hasattr(obj, "add_scalar") and hasattr(obj, "add_hparams_session"):
        return obj  # type: ignore[no-any-return]
    tbx = sys.modules.get("tensorboardX.writer")
    if tbx is not None and isinstance(obj, tbx.SummaryWriter):
        return _TbxAdapter(obj, run_dir=_same_dir(obj.logdir, run_dir), flush_secs=flush_secs)
    torch_writer = sys.modules.get("torch.utils.tensorboard.writer")
    if torch_writer is not None and isinstance(obj, torch_writer.SummaryWriter):
        return _TorchAdapter(obj, run_dir=_same_dir(obj.log_dir, run_dir), flush_secs=flush_secs)
    module = type(obj).__module__
    if module.split(".")[0] == "tensorflow" and hasattr(obj, "as_default"):
        tf_dir = None if run_dir is None else os.fspath(run_dir)  # a tf writer does not tell its directory
        return _TfAdapter(obj, run_dir=tf_dir, flush_secs=flush_secs)
    raise TypeError(
        f"as_writer() got {module}.{type(obj).__qualname__}; expected None, a bidviz.writers.EventWriter, a "
        "tensorboardX.SummaryWriter, a torch.utils.tensorboard.SummaryWriter, a tf.summary writer "
        "(tf.summary.create_file_writer) or an object with add_scalar() and add_hparams_session() (the "
        "bidviz.writers.Writer protocol)"
    )


def _same_dir(logdir: str, run_dir: str | os.PathLike[str] | None) -> str:
    if run_dir is not None and os.path.realpath(run_dir) != os.path.realpath(logdir):
        raise ValueError(f"the writer logs to {logdir!r}, not to the run directory {os.fspath(run_dir)!r}")
    return str(logdir)


class _Adapter:
    """A user's writer. Summaries are encoded here and handed to `_write`, never to the writers' add_* methods,
    which rename tags (`lr@1` -> `lr_1`; text gets a '/text_summary' suffix), log on every NaN and need PIL for
    images. One flusher thread per adapter flushes `flush_secs` after the first write since the last flush (a write
    only sets an event: starting a `threading.Timer` each time cost the writing thread 0.1-0.5 ms, ten times a
    second at the Bridge's default cadence); close() only flushes."""

    def __init__(self, writer: Any, *, run_dir: str | None, flush_secs: float) -> None:
        self.run_dir = run_dir
        self._writer = writer
        self._flush_secs = flush_secs
        self._lock = threading.Lock()
        self._due = threading.Event()  # set by the first write since the last flush
        self._flusher: threading.Thread | None = None
        self._closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._add(summaries.scalar_value(tag, value), step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        self._add(summaries.histogram_value(tag, values), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._add(summaries.text_value(tag, text), step)

    def add_image(self, tag: str, array: Any, step: int, dataformats: str = "CHW") -> None:
        self._add(summaries.image_value(tag, array, dataformats), step)

    def add_hparams_session(self, hparams: Mapping[str, HParamValue], metric_tags: Sequence[str]) -> None:
        self._add(b"".join(summaries.hparams_values(hparams, metric_tags)), 0)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.flush()
        self._due.set()  # the flusher wakes and ends

    def _add(self, values: bytes, step: int) -> None:
        with self._lock:
            if self._closed:
                # A closed tensorboardX or torch writer would silently start a new event file.
                raise RuntimeError(f"the writer for {self.run_dir!r} is closed")
            self._write(values, int(step))
            self._after_write()

    def _after_write(self) -> None:  # with the lock held
        if self._flush_secs <= 0:
            self._writer.flush()
        elif not self._due.is_set():
            self._due.set()
            if self._flusher is None:
                args = (weakref.ref(self), self._due, self._flush_secs)
                self._flusher = threading.Thread(target=_flush_later, args=args, name="bidviz-flush", daemon=True)
                self._flusher.start()
                weakref.finalize(self, self._due.set)  # an adapter dropped unclosed: its flusher ends too

    def _write(self, values: bytes, step: int) -> None:
        raise NotImplementedError


def _flush_later(ref: weakref.ref[_Adapter], due: threading.Event, secs: float) -> None:
    """An adapter's flusher: `secs` after the first write since the last flush, a flush. Holds the adapter only
    while flushing; ends once it is closed or collected. A flush that fails is retried at the next write (and the
    Bridge's own flush reports it)."""
    while True:
        due.wait()
        time.sleep(secs)
        adapter = ref()
        if adapter is None or adapter._closed:
            return
        due.clear()  # before the flush: a write during it sets it again, for the next one
        try:
            adapter.flush()
        except Exception:  # noqa: BLE001, S112 - this thread has no one to tell; the Bridge's flush raises it
            continue
        finally:
            del adapter


class _EventWriterAdapter(_Adapter):
    """A user's own EventWriter: written to directly (scalars through its fast path)."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the writer for {self.run_dir!r} is closed")
            self._writer.add_scalar(tag, value, step)
            self._after_write()

    def _write(self, values: bytes, step: int) -> None:
        self._writer._add(values, step, None)

    def _after_write(self) -> None:
        if not 0 < self._writer.flush_secs <= self._flush_secs:  # its own flusher is not soon enough
            super()._after_write()


class _TbxAdapter(_Adapter):
    def __init__(self, writer: Any, *, run_dir: str | None, flush_secs: float) -> None:
        from tensorboardX.proto.event_pb2 import Event

        super().__init__(writer, run_dir=run_dir, flush_secs=flush_secs)
        self._event = Event

    def _write(self, values: bytes, step: int) -> None:
        # Past its queue when the compat route can (tensorboardX's flush() does not wait for the queue).
        compat.tbx_write_event(self._writer, self._event.FromString(summaries.event(values, step)))


class _TorchAdapter(_Adapter):
    def __init__(self, writer: Any, *, run_dir: str | None, flush_secs: float) -> None:
        # tensorboard's Summary class, which torch's writer insists on; reached through torch, never imported here.
        from torch.utils.tensorboard.summary import Summary  # type: ignore[attr-defined]

        super().__init__(writer, run_dir=run_dir, flush_secs=flush_secs)
        self._summary_class = Summary

    def _write(self, values: bytes, step: int) -> None:
        # torch's flush() does wait for its queue, so its FileWriter's public add_summary is fine.
        compat.torch_file_writer(self._writer).add_summary(self._summary_class.FromString(values), step, time.time())


class _TfAdapter(_Adapter):
    """A TF2 `tf.summary` writer; every summary goes in as serialized bytes inside `writer.as_default()`."""

    def __init__(self, writer: Any, *, run_dir: str | None, flush_secs: float) -> None:
        import tensorflow as tf  # only reached with a tf writer in hand, so tensorflow is imported already

        super().__init__(writer, run_dir=run_dir, flush_secs=flush_secs)
        self._tf = tf

    def _write(self, values: bytes, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.experimental.write_raw_pb(values, step=step)

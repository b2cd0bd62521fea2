"""One small writer protocol for the Bridge, and adapters over tensorboardX, torch and tf.summary writers.

Training-side dependencies only: numpy here, tensorboardX's protos when writing (imported then, since `import
tensorboardX` also imports torch when installed); torch's and tensorflow's summary modules only inside the adapter for
a writer of theirs, which the user has imported already. Never tensorboard itself.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

HParamValue = float | int | str | bool

_IMAGE_FORMATS = ("HW", "HWC", "CHW")
_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA


class Writer(Protocol):
    """What the Bridge writes through: one run directory, one thread writing, flush() from any thread."""

    run_dir: str | None

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def add_histogram(self, tag: str, values: Any, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def add_image(self, tag: str, array: Any, step: int, dataformats: str) -> None: ...

    def add_hparams_session(self, hparams: Mapping[str, HParamValue], metric_tags: Sequence[str]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def as_writer(obj: Any = None, run_dir: str | os.PathLike[str] | None = None, flush_secs: float = 1.0) -> Writer:
    """Return a `Writer` for `obj`: None (a writer of our own in `run_dir`), a tensorboardX, torch or tf.summary
    writer (wrapped; the user keeps ownership, so close() only flushes), or an object that already is a Writer.

    Whatever the wrapped writer's own setting, what goes through the adapter is on disk within `flush_secs`.
    """
    from tensorboardX import SummaryWriter as TbxSummaryWriter

    if obj is None:
        if run_dir is None:
            raise ValueError("as_writer() needs run_dir when no writer is given")
        writer = TbxSummaryWriter(os.fspath(run_dir), flush_secs=flush_secs)
        return _TbxAdapter(writer, run_dir=writer.logdir, owned=True, flush_secs=flush_secs)
    if hasattr(obj, "add_scalar") and hasattr(obj, "add_hparams_session"):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, TbxSummaryWriter):
        return _TbxAdapter(obj, run_dir=_same_dir(obj.logdir, run_dir), owned=False, flush_secs=flush_secs)
    # A torch writer can only exist if its module is loaded already: look it up rather than import it.
    torch_writer = sys.modules.get("torch.utils.tensorboard.writer")
    if torch_writer is not None and isinstance(obj, torch_writer.SummaryWriter):
        return _TorchAdapter(obj, run_dir=_same_dir(obj.log_dir, run_dir), owned=False, flush_secs=flush_secs)
    module = type(obj).__module__
    if module.split(".")[0] == "tensorflow" and hasattr(obj, "as_default"):
        tf_dir = None if run_dir is None else os.fspath(run_dir)  # a tf writer does not tell its directory
        return _TfAdapter(obj, run_dir=tf_dir, owned=False, flush_secs=flush_secs)
    raise TypeError(
        f"as_writer() got {module}.{type(obj).__qualname__}; expected None, a tensorboardX.SummaryWriter, a "
        "torch.utils.tensorboard.SummaryWriter, a tf.summary writer (tf.summary.create_file_writer) or an object "
        "with add_scalar() and add_hparams_session() (the bidviz.writers.Writer protocol)"
    )


def _same_dir(logdir: str, run_dir: str | os.PathLike[str] | None) -> str:
    if run_dir is not None and os.path.realpath(run_dir) != os.path.realpath(logdir):
        raise ValueError(f"the writer logs to {logdir!r}, not to the run directory {os.fspath(run_dir)!r}")
    return str(logdir)


class _Adapter:
    """Summaries are built here (as tensorboardX protos) and handed to `_write`, never to the writers' add_*
    methods, which rename tags (`lr@1` -> `lr_1`; text gets a '/text_summary' suffix), log on every NaN and need
    PIL for images. A timer flushes `flush_secs` after the first write since the last flush."""

    def __init__(self, writer: Any, *, run_dir: str | None, owned: bool, flush_secs: float) -> None:
        self.run_dir = run_dir
        self._writer = writer
        self._owned = owned
        self._flush_secs = flush_secs
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._add_summary(scalar_summary(tag, value), step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        self._add_summary(histogram_summary(tag, values), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._add_summary(text_summary(tag, text), step)

    def add_image(self, tag: str, array: Any, step: int, dataformats: str) -> None:
        self._add_summary(image_summary(tag, array, dataformats), step)

    def add_hparams_session(self, hparams: Mapping[str, HParamValue], metric_tags: Sequence[str]) -> None:
        for summary in hparams_summaries(hparams, metric_tags):
            self._add_summary(summary, 0)

    def flush(self) -> None:
        with self._lock:
            self._cancel_timer()
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cancel_timer()
            if self._owned:
                self._writer.close()
            else:
                self._writer.flush()

    def _add_summary(self, summary: Any, step: int) -> None:
        with self._lock:
            if self._closed:
                # A closed tensorboardX or torch writer would silently start a new event file.
                raise RuntimeError(f"the writer for {self.run_dir!r} is closed")
            self._write(summary, int(step))
            if self._flush_secs <= 0:
                self._writer.flush()
            elif self._timer is None:
                self._timer = threading.Timer(self._flush_secs, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write(self, summary: Any, step: int) -> None:
        raise NotImplementedError


class _TbxAdapter(_Adapter):
    def __init__(self, writer: Any, *, run_dir: str | None, owned: bool, flush_secs: float) -> None:
        from tensorboardX.proto.event_pb2 import Event

        super().__init__(writer, run_dir=run_dir, owned=owned, flush_secs=flush_secs)
        self._event = Event

    def _write(self, summary: Any, step: int) -> None:
        # Straight to its EventsWriter (which has its own lock), past its queue: tensorboardX's flush() flushes the
        # file without waiting for the queue, so events added just before a flush() could stay unwritten.
        event = self._event(summary=summary, wall_time=time.time(), step=step)
        self._writer._get_file_writer().event_writer._ev_writer.write_event(event)


class _TorchAdapter(_Adapter):
    def __init__(self, writer: Any, *, run_dir: str | None, owned: bool, flush_secs: float) -> None:
        # tensorboard's Summary class, which torch's writer insists on; reached through torch, never imported here.
        from torch.utils.tensorboard.summary import Summary  # type: ignore[attr-defined]

        super().__init__(writer, run_dir=run_dir, owned=owned, flush_secs=flush_secs)
        self._summary_class = Summary

    def _write(self, summary: Any, step: int) -> None:
        # torch's flush() does wait for its queue, so its public path is fine.
        native = self._summary_class.FromString(summary.SerializeToString())
        self._writer._get_file_writer().add_summary(native, step)


class _TfAdapter(_Adapter):
    """A TF2 `tf.summary` writer; every summary goes in as a serialized proto inside `writer.as_default()`."""

    def __init__(self, writer: Any, *, run_dir: str | None, owned: bool, flush_secs: float) -> None:
        import tensorflow as tf  # only reached with a tf writer in hand, so tensorflow is imported already

        super().__init__(writer, run_dir=run_dir, owned=owned, flush_secs=flush_secs)
        self._tf = tf

    def _write(self, summary: Any, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


def to_numpy(values: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device or dtype, bfloat16 too) or a sequence."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu()
        if values.dtype.is_floating_point and values.dtype.itemsize < 4:
            values = values.float()  # bfloat16 has no numpy dtype
        return np.asarray(values.numpy())
    return np.asarray(values)


def image_to_uint8_hwc(array: Any, dataformats: str) -> np.ndarray:
    """Pixels as uint8 H×W×C (C = 1, 3 or 4). Floats outside [0, 1] are min-max scaled; a constant one is zeros."""
    fmt = dataformats.upper()
    if fmt not in _IMAGE_FORMATS:
        raise ValueError(f"dataformats must be one of {', '.join(_IMAGE_FORMATS)}; got {dataformats!r}")
    pixels = to_numpy(array)
    if pixels.ndim != len(fmt) or pixels.size == 0:
        raise ValueError(f"an image in {fmt} format needs a non-empty {len(fmt)}-D array; got shape {pixels.shape}")
    pixels = pixels[..., np.newaxis] if fmt == "HW" else pixels.transpose(1, 2, 0) if fmt == "CHW" else pixels
    if pixels.shape[2] not in _PNG_COLOR_TYPES:
        raise ValueError(f"an image needs 1 (grey), 3 (RGB) or 4 (RGBA) channels; got shape {pixels.shape} as HWC")
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    pixels = pixels.astype(np.float64)
    finite = pixels[np.isfinite(pixels)]
    if finite.size != pixels.size or finite.min() < 0.0 or finite.max() > 1.0:
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        with np.errstate(invalid="ignore"):
            pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    return np.round(pixels * 255.0).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """A PNG file from uint8 H×W×C pixels, with zlib alone (no PIL on the training side)."""
    height, width, channels = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # each row starts with filter type 0
    rows[:, 1:] = pixels.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def scalar_summary(tag: str, value: float) -> Any:
    """A tensorboardX `Summary` with one `simple_value` (NaN and infinities included)."""
    from tensorboardX.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])


def histogram_summary(tag: str, values: Any) -> Any:
    """A tensorboardX histogram `Summary` with TensorFlow's default buckets, the tag kept as given."""
    from tensorboardX.summary import histogram

    summary = histogram(tag, to_numpy(values), _default_bins())
    summary.value[0].tag = tag  # histogram() replaces characters TensorFlow does not allow in op names
    return summary


@functools.cache
def _default_bins() -> list[float]:
    """TensorFlow's histogram bucket edges (as tensorboardX's SummaryWriter.default_bins): +-1e-12 * 1.1**k and 0."""
    edges = []
    edge = 1e-12
    while edge < 1e20:
        edges.append(edge)
        edge *= 1.1
    return [-e for e in reversed(edges)] + [0.0] + edges


def image_summary(tag: str, array: Any, dataformats: str) -> Any:
    """A tensorboardX `Summary` holding one PNG image."""
    from tensorboardX.proto.summary_pb2 import Summary

    pixels = image_to_uint8_hwc(array, dataformats)
    height, width, channels = pixels.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encode_png(pixels))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def text_summary(tag: str, text: str) -> Any:
    """A tensorboardX `Summary` for the text plugin under `tag` itself: a 0-d string tensor, as tf.summary.text."""
    from tensorboardX.proto.plugin_text_pb2 import TextPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto

    plugin = SummaryMetadata.PluginData(plugin_name="text", content=TextPluginData(version=0).SerializeToString())
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")])
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin), tensor=tensor)])


def hparams_summaries(hparams: Mapping[str, HParamValue], metric_tags: Sequence[str]) -> list[Any]:
    """The hparams plugin's experiment and session_start_info summaries (tensorboardX protos) for this run.

    No session_end_info: the run is still going. The metric tags become the dashboard's metric columns.
    """
    from tensorboardX.summary import hparams as tbx_hparams

    values: dict[str, HParamValue] = {}
    for name, value in hparams.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"hparam {name!r} must be a bool, int, float or str; got {type(value).__name__}")
        values[str(name)] = value
    experiment, session_start, _session_end = tbx_hparams(values, dict.fromkeys(metric_tags))
    return [experiment, session_start]

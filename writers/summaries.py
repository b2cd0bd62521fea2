"""TensorBoard events and summaries encoded straight to protobuf wire bytes, with no protobuf classes.

Why by hand: building a `Summary` proto object costs more than the rest of a write put together, and the only
proto classes available on the training side are tensorboardX's, whose package imports torch (about a second).
The few message shapes TensorBoard reads are small, and the tests check each one against TensorBoard's own protos:
scalars byte for byte, the other kinds field for field. Fields go out in field-number order and proto3 defaults
(0, empty) are left out, exactly as protobuf serializes them.
"""

from __future__ import annotations

import functools
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

HParamValue = float | int | str | bool

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_IMAGE_FORMATS = ("HW", "HWC", "CHW")
_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA
_DT_FLOAT, _DT_STRING = 1, 7
_DATA_TYPE = {str: 1, bool: 2, float: 3}  # tensorboard.hparams.DataType: STRING, BOOL, FLOAT64
FILE_VERSION = "brain.Event:2"


# -- wire format --------------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes), as protobuf does."""
    if 0 <= n < 0x80:
        return bytes((n,))
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A bytes, string or sub-message field (always written: for a sub-message, presence is meaningful)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _string(field: int, text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return length_delimited(field, data) if data else b""


def _double(field: int, value: float) -> bytes:
    packed = _DOUBLE.pack(value)
    return varint(field << 3 | 1) + packed if packed != b"\0" * 8 else b""  # -0.0 is written, as protobuf does


def _int(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value) if value else b""


def pack_float(value: float) -> bytes:
    """A float32 as protobuf stores it: values beyond float32's range become infinities."""
    try:
        return _FLOAT.pack(value)
    except OverflowError:
        return _FLOAT.pack(float("inf") if value > 0 else float("-inf"))


# -- events ---------------------------------------------------------------------------------------------------------


def event(values: bytes, step: int, wall_time: float | None = None) -> bytes:
    """An Event holding a Summary made of `values` (concatenated `Summary.value` entries)."""
    wall = time.time() if wall_time is None else float(wall_time)
    return _double(1, wall) + _int(2, checked_step(int(step))) + length_delimited(5, values)


def checked_step(step: int) -> int:
    """`step`, refused with a sentence past an int64 (Event.step): varint would silently keep its low 64 bits."""
    if not -(2**63) <= step < 2**63:
        raise ValueError(f"step {step} does not fit an event's step (an int64: -2**63 to 2**63 - 1)")
    return step


def file_version_event(wall_time: float | None = None) -> bytes:
    """The first event of every event file."""
    return _double(1, time.time() if wall_time is None else wall_time) + _string(3, FILE_VERSION)


def _entry(fields: bytes) -> bytes:
    return length_delimited(1, fields)  # one Summary.value


def _plugin_metadata(plugin: str, content: bytes = b"", data_class: int = 0) -> bytes:
    plugin_data = _string(1, plugin) + _string(2, content)
    return length_delimited(9, length_delimited(1, plugin_data) + _int(4, data_class))


def scalar_head(tag: str) -> bytes:
    """Everything of a one-scalar Event after its step, up to the float itself: the writer's fast path appends
    these bytes and the 4 bytes of the value. Field 5 (summary) { field 1 (value) { tag, field 2 (simple_value) } }."""
    tag_field = _string(1, tag)
    value = tag_field + b"\x15"  # the simple_value key; its 4 bytes follow
    entry = b"\x0a" + varint(len(value) + 4) + value
    return b"\x2a" + varint(len(entry) + 4) + entry


def scalar_value(tag: str, value: float) -> bytes:
    return _entry(_string(1, tag) + b"\x15" + pack_float(float(value)))


def text_value(tag: str, text: str) -> bytes:
    """A 0-d string tensor under the text plugin, as tensorboard's `text_pb` (and tf.summary.text) write it."""
    tensor = _int(1, _DT_STRING) + length_delimited(2, b"") + length_delimited(8, text.encode("utf-8"))
    return _entry(_string(1, tag) + length_delimited(8, tensor) + _plugin_metadata("text"))


def histogram_value(tag: str, values: Any) -> bytes:
    """A `histo` (HistogramProto) with TensorFlow's default bucket edges, as tensorboardX computes it."""
    return _entry(_string(1, tag) + length_delimited(5, histogram_proto(values)))


def image_value(tag: str, array: Any, dataformats: str) -> bytes:
    """A PNG `image` (Summary.Image)."""
    pixels = image_to_uint8_hwc(array, dataformats)
    height, width, channels = pixels.shape
    image = _int(1, height) + _int(2, width) + _int(3, channels) + _string(4, encode_png(pixels))
    return _entry(_string(1, tag) + length_delimited(4, image))


def hparams_values(hparams: Mapping[str, Any], metric_tags: Iterable[str]) -> list[bytes]:
    """The hparams plugin's experiment and session_start_info entries for this run, shaped as tensorboard's own
    `hparams_pb` writes them (a null tensor, so TensorBoard's Rust data server keeps them too). No session_end_info:
    the run is still going. The metric tags become the dashboard's metric columns."""
    infos, entries = [], []
    for name, raw in hparams.items():
        value = raw.item() if isinstance(raw, np.generic) else raw
        if value is None:
            continue
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"hparam {name!r} must be a bool, int, float or str; got {type(raw).__name__}")
        kind: type
        if isinstance(value, bool):
            kind, proto_value = bool, b"\x20" + (b"\x01" if value else b"\x00")
        elif isinstance(value, str):
            kind, proto_value = str, length_delimited(3, value.encode("utf-8"))
        else:
            kind, proto_value = float, b"\x11" + _DOUBLE.pack(float(value))
        key = str(name)
        infos.append(length_delimited(4, _string(1, key) + _int(4, _DATA_TYPE[kind])))
        entries.append(length_delimited(1, length_delimited(1, key.encode("utf-8")) + length_delimited(2, proto_value)))
    metrics = [length_delimited(5, length_delimited(1, _string(2, tag))) for tag in metric_tags]
    experiment = length_delimited(2, b"".join(infos) + b"".join(metrics))
    session_start = length_delimited(3, b"".join(entries) + _double(5, time.time()))
    null_tensor = length_delimited(8, _int(1, _DT_FLOAT) + length_delimited(2, length_delimited(2, b"")))
    return [
        _entry(_string(1, tag) + null_tensor + _plugin_metadata("hparams", content))
        for tag, content in (("_hparams_/experiment", experiment), ("_hparams_/session_start_info", session_start))
    ]


# -- arrays -----------------------------------------------------------------------------------------------------------


def to_numpy(values: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device or dtype, bfloat16 too), a jax array or a
    sequence."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu()
        if values.dtype.is_floating_point and values.dtype.itemsize < 4:
            values = values.float()  # bfloat16 has no numpy dtype
        return np.asarray(values.numpy())
    return np.asarray(values)


@functools.cache
def default_bins() -> np.ndarray:
    """TensorFlow's histogram bucket edges (as tensorboardX's SummaryWriter.default_bins): +-1e-12 * 1.1**k and 0."""
    edges = []
    edge = 1e-12
    while edge < 1e20:
        edges.append(edge)
        edge *= 1.1
    return np.array([-e for e in reversed(edges)] + [0.0] + edges)


def histogram_proto(values: Any) -> bytes:
    """HistogramProto bytes: the counts np.histogram would give over `default_bins()` (a bucket is [left, right),
    the last one closed; values outside the edges and NaN are not bucketed), trimmed to the non-empty range plus one
    empty bucket on the left, as tensorboardX's make_histogram. One binary search per value instead of a sort."""
    flat = to_numpy(values).reshape(-1)
    if flat.size == 0:
        raise ValueError("a histogram needs at least one value; got an empty array")
    flat = flat.astype(np.float64, copy=False)
    edges = default_bins()
    index = np.searchsorted(edges, flat, side="right") - 1  # bucket i holds edges[i] <= v < edges[i + 1]
    index[flat == edges[-1]] = len(edges) - 2
    counts = np.bincount(index[(index >= 0) & (index < len(edges) - 1)], minlength=len(edges) - 1)
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        raise ValueError("a histogram needs finite values within +-1e20")
    start, end = int(nonzero[0]), int(nonzero[-1]) + 1
    kept = counts[start - 1 : end] if start > 0 else np.concatenate([[0], counts[:end]])
    limits = edges[start : end + 1]
    body = (
        _double(1, float(flat.min()))
        + _double(2, float(flat.max()))
        + _double(3, float(flat.size))
        + _double(4, float(flat.sum()))
        + _double(5, float(flat.dot(flat)))
    )
    return (
        body + length_delimited(6, limits.astype("<f8").tobytes()) + length_delimited(7, kept.astype("<f8").tobytes())
    )


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
    low, high = float(pixels.min()), float(pixels.max())  # NaN if any pixel is NaN
    if not (0.0 <= low and high <= 1.0):
        finite = pixels[np.isfinite(pixels)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
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

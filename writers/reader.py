"""Read event files back, whatever wrote them: TFRecord framing checked here, events parsed with tensorboardX's protos.

The plain, correct reader (a faster one comes later): it reads whole runs, for tests and `bidviz export`.
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
from google.protobuf.message import DecodeError

__all__ = ["read_events", "read_scalars"]

_HEADER = struct.Struct("<QI")  # record length, masked crc32c of those 8 bytes
_FOOTER = struct.Struct("<I")  # masked crc32c of the data
_MASK_DELTA = 0xA282EAD8

# TensorProto dtype enum -> little-endian numpy dtype, and the repeated field a 0-d value may sit in instead.
_SCALAR_DTYPES = {1: ("<f4", "float_val"), 2: ("<f8", "double_val"), 3: ("<i4", "int_val"), 9: ("<i8", "int64_val")}
_DT_HALF = 19

PathLike = str | os.PathLike[str]


def read_scalars(path: PathLike) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar of a run directory or one event file: tag -> [(step, wall_time, value)] in file order.

    A scalar is a `simple_value`, or a tensor of the 'scalars' plugin (TF2 and torch's new_style), or a 0-d
    numeric tensor of a tag with no plugin. TF2 writes a tag's metadata only with its first value, so the plugin
    is remembered per tag across the run's files.
    """
    series: dict[str, list[tuple[int, float, float]]] = {}
    plugin_of: dict[str, str] = {}
    for _file, event in read_events(path):
        if event.WhichOneof("what") != "summary":
            continue
        for value in event.summary.value:
            if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
                plugin_of[value.tag] = value.metadata.plugin_data.plugin_name
            number = _scalar_of(value, plugin_of.get(value.tag))
            if number is not None:
                series.setdefault(value.tag, []).append((event.step, event.wall_time, number))
    return series


def read_events(path: PathLike) -> Iterator[tuple[str, Any]]:
    """(file, Event) for every record of a run directory's event files (sorted by name) or of one file."""
    # Imported here: `import tensorboardX` also imports torch when it is installed (about a second).
    from tensorboardX.proto.event_pb2 import Event

    for file in _event_files(path):
        for offset, data in _records(file):
            try:
                event = Event.FromString(data)
            except DecodeError as error:  # the checksum was right, so the writer itself wrote something else
                raise ValueError(f"{file}: record at byte offset {offset} is not an Event: {error}") from error
            yield file, event


def _scalar_of(value: Any, plugin: str | None) -> float | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor" and plugin in (None, "scalars"):
        return _tensor_scalar(value.tensor, any_shape=plugin == "scalars")
    return None


def _event_files(path: PathLike) -> list[str]:
    path = os.fspath(path)
    if not os.path.isdir(path):
        return [path]
    with os.scandir(path) as entries:
        names = sorted(entry.name for entry in entries if "tfevents" in entry.name and entry.is_file())
    return [os.path.join(path, name) for name in names]


def _records(file: str) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) of each TFRecord; a record cut short at the end (a writer mid-write) ends with a warning."""
    with open(file, "rb") as stream:
        offset = 0
        while header := stream.read(_HEADER.size):
            data = _record_data(stream, header, file, offset)
            if data is None:
                warnings.warn(f"{file}: skipped a truncated record at byte offset {offset}", stacklevel=2)
                return
            yield offset, data
            offset += _HEADER.size + len(data) + _FOOTER.size


def _record_data(stream: BinaryIO, header: bytes, file: str, offset: int) -> bytes | None:
    """The checked data of the record whose header was just read, or None if the file ends inside it."""
    if len(header) < _HEADER.size:
        return None
    length, length_crc = _HEADER.unpack(header)
    if _masked_crc(header[:8]) != length_crc:
        raise ValueError(f"{file}: corrupted record at byte offset {offset} (length checksum mismatch)")
    data = stream.read(length)
    footer = stream.read(_FOOTER.size)
    if len(data) < length or len(footer) < _FOOTER.size:
        return None
    if _masked_crc(data) != _FOOTER.unpack(footer)[0]:
        raise ValueError(f"{file}: corrupted record at byte offset {offset} (data checksum mismatch)")
    return data


@functools.cache
def _crc32c() -> Callable[[bytes], int]:
    try:
        import google_crc32c

        return google_crc32c.value  # type: ignore[no-any-return]
    except ImportError:  # google-crc32c is optional; tensorboardX's own (the `crc32c` package or pure Python) is slower
        import tensorboardX.crc32c

        return tensorboardX.crc32c.crc32c  # type: ignore[no-any-return]


def _masked_crc(data: bytes) -> int:
    crc = _crc32c()(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _tensor_scalar(tensor: Any, *, any_shape: bool) -> float | None:
    """The value of a one-element numeric tensor (0-d unless `any_shape`), else None."""
    dims = [dim.size for dim in tensor.tensor_shape.dim]
    if (dims and not any_shape) or any(size != 1 for size in dims):
        return None
    if tensor.dtype == _DT_HALF:
        numpy_dtype, field = "<f2", "half_val"
    elif tensor.dtype in _SCALAR_DTYPES:
        numpy_dtype, field = _SCALAR_DTYPES[tensor.dtype]
    else:
        return None
    if tensor.tensor_content:
        return float(np.frombuffer(tensor.tensor_content, dtype=numpy_dtype, count=1)[0])
    values = getattr(tensor, field)
    if not values:
        return 0.0  # a TensorProto with no values is all zeros
    if field == "half_val":  # float16 bit patterns kept in an int32 field
        return float(np.array(values[0], dtype=np.uint16).view(np.float16))
    return float(values[0])

"""read_scalars / read_events against files written by tensorboardX, torch and TensorBoard's own (TF2-format) writer."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorboardX
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch.utils.tensorboard import SummaryWriter as TorchSummaryWriter

from bidviz.writers import read_events, read_scalars


def only_file(run_dir: Path) -> Path:
    (file,) = run_dir.glob("*tfevents*")
    return file


def record_offsets(file: Path) -> list[int]:
    """Byte offsets of the file's TFRecords, found by walking the framing (no checksums) independently."""
    data = file.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 12 + length + 4
    return offsets


def write_tbx_run(run_dir: Path, values: list[float]) -> None:
    writer = tensorboardX.SummaryWriter(str(run_dir))
    for step, value in enumerate(values):
        writer.add_scalar("loss", value, step * 10)
    writer.close()


def write_events(file_dir: Path, *events: event_pb2.Event) -> Path:
    """Events through TensorBoard's own EventFileWriter (what TF2 writers produce); returns the file."""
    writer = EventFileWriter(str(file_dir))
    for event in events:
        writer.add_event(event)
    writer.close()
    return only_file(file_dir)


def tensor_event(tag: str, tensor: tensor_pb2.TensorProto, step: int, plugin: str | None = None) -> event_pb2.Event:
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata if plugin else None)
    return event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary_pb2.Summary(value=[value]))


def test_tensorboardx_file_matches_event_accumulator(tmp_path: Path) -> None:
    writer = tensorboardX.SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.add_scalar("acc", float("nan") if step == 2 else step * 0.1, step)
    writer.add_text("notes", "not a scalar", 1)
    writer.add_histogram("weights", np.arange(5), 1)
    writer.close()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = read_scalars(tmp_path)
    assert sorted(series) == ["acc", "loss"]
    for tag, points in series.items():
        expected = [(event.step, event.wall_time, event.value) for event in accumulator.Scalars(tag)]
        np.testing.assert_array_equal(np.array(points), np.array(expected))  # NaN equals NaN here


def test_torch_file_old_and_new_style(tmp_path: Path) -> None:
    writer = TorchSummaryWriter(str(tmp_path))
    for step in range(3):
        writer.add_scalar("simple", step + 0.5, step)
        writer.add_scalar("tensor", step + 0.25, step, new_style=True)
        writer.add_scalar("double", 0.1 * step, step, new_style=True, double_precision=True)
    writer.close()
    series = read_scalars(tmp_path)
    assert {tag: [(step, value) for step, _, value in points] for tag, points in series.items()} == {
        "simple": [(0, 0.5), (1, 1.5), (2, 2.5)],
        "tensor": [(0, 0.25), (1, 1.25), (2, 2.25)],
        "double": [(0, 0.0), (1, 0.1), (2, 0.2)],  # exactly: stored as double_val
    }
    assert all(wall_time > time.time() - 600 for points in series.values() for _, wall_time, _ in points)


def test_tf2_scalars_with_metadata_only_on_the_first_value(tmp_path: Path) -> None:
    events = []
    for step, value in enumerate([0.5, 0.25, 0.125]):
        summary = scalar_pb("loss", value)
        if step:
            summary.value[0].ClearField("metadata")  # as TF2's writer does after a tag's first value
        events.append(event_pb2.Event(step=step, wall_time=2000.0 + step, summary=summary))
    write_events(tmp_path, *events)
    assert read_scalars(tmp_path) == {"loss": [(0, 2000.0, 0.5), (1, 2001.0, 0.25), (2, 2002.0, 0.125)]}


def _proto(dtype: str, **fields: object) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, **fields)


def _content(dtype: str, value: float, numpy_dtype: str) -> tensor_pb2.TensorProto:
    return _proto(dtype, tensor_content=np.array(value, dtype=numpy_dtype).tobytes())


TENSOR_ENCODINGS = {
    "float_val": (_proto("DT_FLOAT", float_val=[1.5]), 1.5),
    "double_val": (_proto("DT_DOUBLE", double_val=[0.1]), 0.1),
    "half_val": (_proto("DT_HALF", half_val=[int(np.array(-2.5, np.float16).view(np.uint16))]), -2.5),
    "int_val": (_proto("DT_INT32", int_val=[-7]), -7.0),
    "int64_val": (_proto("DT_INT64", int64_val=[2**40]), float(2**40)),
    "float content": (_content("DT_FLOAT", 3.25, "<f4"), 3.25),
    "double content": (_content("DT_DOUBLE", 0.3, "<f8"), 0.3),
    "half content": (_content("DT_HALF", 0.5, "<f2"), 0.5),
    "int32 content": (_content("DT_INT32", -3, "<i4"), -3.0),
    "int64 content": (_content("DT_INT64", 2**50, "<i8"), float(2**50)),
    "no values means zero": (_proto("DT_FLOAT"), 0.0),
}


@pytest.mark.parametrize("encoding", TENSOR_ENCODINGS)
@pytest.mark.parametrize("plugin", [None, "scalars"])
def test_tensor_scalar_encodings(tmp_path: Path, encoding: str, plugin: str | None) -> None:
    tensor, expected = TENSOR_ENCODINGS[encoding]
    write_events(tmp_path, tensor_event("x", tensor, 4, plugin))
    assert read_scalars(tmp_path) == {"x": [(4, 1004.0, expected)]}


def test_tensors_that_are_not_scalars_are_skipped(tmp_path: Path) -> None:
    vector = _proto("DT_FLOAT", float_val=[1.0, 2.0], tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 2}]))
    one = tensor_shape_pb2.TensorShapeProto(dim=[{"size": 1}])
    write_events(
        tmp_path,
        tensor_event("vector", vector, 1),
        tensor_event("text", _proto("DT_STRING", string_val=[b"hi"]), 1, plugin="text"),
        tensor_event("custom", _proto("DT_FLOAT", float_val=[1.0]), 1, plugin="custom"),
        tensor_event("custom", _proto("DT_FLOAT", float_val=[2.0]), 2),  # the tag's plugin is remembered
        tensor_event("shaped scalar", _proto("DT_FLOAT", float_val=[9.0], tensor_shape=one), 1, plugin="scalars"),
    )
    assert read_scalars(tmp_path) == {"shaped scalar": [(1, 1001.0, 9.0)]}


def test_run_directory_reads_event_files_sorted_by_name_only(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    later = write_events(scratch / "a", tensor_event("x", _proto("DT_FLOAT", float_val=[5.0]), 5, "scalars"))
    earlier = write_events(scratch / "b", tensor_event("x", _proto("DT_FLOAT", float_val=[1.0]), 1))
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    later.rename(run / "events.out.tfevents.2.host")
    earlier.rename(run / "events.out.tfevents.1.host")
    (run / "notes.txt").write_text("not events")
    write_tbx_run(run / "sub", [7.0])  # not recursed into
    assert read_scalars(run) == {"x": [(1, 1001.0, 1.0), (5, 1005.0, 5.0)]}
    assert read_scalars(run / "events.out.tfevents.2.host") == {"x": [(5, 1005.0, 5.0)]}
    assert read_scalars(tmp_path / "scratch") == {}


def test_read_events_yields_file_and_every_event(tmp_path: Path) -> None:
    write_tbx_run(tmp_path, [1.0, 2.0])
    file = only_file(tmp_path)
    events = list(read_events(tmp_path))
    assert [name for name, _ in events] == [str(file)] * 3
    assert events[0][1].file_version == "brain.Event:2"
    assert [event.step for _, event in events[1:]] == [0, 10]


@pytest.mark.parametrize("cut", ["inside the data", "inside the footer", "inside the header"])
def test_truncated_last_record_is_skipped_with_a_warning(tmp_path: Path, cut: str) -> None:
    write_tbx_run(tmp_path, [1.0, 2.0, 3.0])
    file = only_file(tmp_path)
    last = record_offsets(file)[-1]
    size = file.stat().st_size
    keep = {"inside the data": size - 10, "inside the footer": size - 2, "inside the header": last + 5}[cut]
    with open(file, "r+b") as stream:
        stream.truncate(keep)
    with pytest.warns(UserWarning, match=re.escape(f"{file}: skipped a truncated record at byte offset {last}")):
        series = read_scalars(tmp_path)
    assert [(step, value) for step, _, value in series["loss"]] == [(0, 1.0), (10, 2.0)]


@pytest.mark.parametrize(
    ("where", "reason"), [(0, "length checksum"), (9, "length checksum"), (12, "data checksum"), (-1, "data checksum")]
)
def test_a_corrupted_byte_raises_with_the_offset(tmp_path: Path, where: int, reason: str) -> None:
    write_tbx_run(tmp_path, [1.0, 2.0, 3.0])
    file = only_file(tmp_path)
    second, third = record_offsets(file)[2:4]  # record 0 is the file_version event
    # The length, the length's checksum (of a length the first scalar already had: checked all the same), the
    # data's first and last byte.
    position = second + where if where >= 0 else third - 5
    data = bytearray(file.read_bytes())
    data[position] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{file}: corrupted record at byte offset {second} ({reason}")):
        read_scalars(file)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / "nope")


def test_without_google_crc32c_a_pure_python_checksum_reads_and_writes_the_same_files(tmp_path: Path) -> None:
    write_tbx_run(tmp_path / "tbx", [1.0, 2.0])
    code = f"""
import sys
sys.modules["google_crc32c"] = None  # makes `import google_crc32c` fail
from bidviz.writers import CRC32C_IMPLEMENTATION, EventWriter, read_scalars
assert CRC32C_IMPLEMENTATION.startswith("pure Python"), CRC32C_IMPLEMENTATION
assert [value for _, _, value in read_scalars({str(tmp_path / "tbx")!r})["loss"]] == [1.0, 2.0]
with EventWriter({str(tmp_path / "ours")!r}) as writer:
    writer.add_scalar("x", 0.5, 3)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    accumulator = EventAccumulator(str(tmp_path / "ours"))
    accumulator.Reload()  # TensorBoard checks nothing, so check the checksums with the C implementation too
    assert [(event.step, event.value) for event in accumulator.Scalars("x")] == [(3, 0.5)]
    assert read_scalars(tmp_path / "ours")["x"][0][2] == 0.5


FAST_PATH_ENCODINGS = {
    "float_val": lambda v: _proto("DT_FLOAT", float_val=[v]),
    "double_val": lambda v: _proto("DT_DOUBLE", double_val=[v]),
    "half_val": lambda v: _proto("DT_HALF", half_val=[int(np.array(v, np.float16).view(np.uint16))]),
    "int64_val": lambda v: _proto("DT_INT64", int64_val=[int(v * 4)]),
    "float content": lambda v: _content("DT_FLOAT", v, "<f4"),
    "double content": lambda v: _content("DT_DOUBLE", v, "<f8"),
    "int32 content": lambda v: _content("DT_INT32", int(v * 4), "<i4"),
}
FAST_PATH_EXPECTED = {
    "half_val": lambda v: float(np.float16(v)),
    "int64_val": lambda v: float(int(v * 4)),
    "int32 content": lambda v: float(int(v * 4)),
    "float_val": lambda v: float(np.float32(v)),
    "float content": lambda v: float(np.float32(v)),
}


@pytest.mark.parametrize("encoding", FAST_PATH_ENCODINGS)
def test_many_tf2_scalars_of_each_encoding(tmp_path: Path, encoding: str) -> None:
    """Enough values that all but the first go through the reader's fast path; steps cross the varint sizes."""
    make = FAST_PATH_ENCODINGS[encoding]
    expected = FAST_PATH_EXPECTED.get(encoding, float)
    steps = [*range(0, 300, 7), 2**20, 2**40]
    values = [(-1.0) ** i * i / 3 for i in range(len(steps))]
    events = [
        tensor_event("x", make(v), s, "scalars" if i == 0 else None)
        for i, (s, v) in enumerate(zip(steps, values, strict=True))
    ]
    write_events(tmp_path, *events)
    assert read_scalars(tmp_path) == {"x": [(s, 1000.0 + s, expected(v)) for s, v in zip(steps, values, strict=True)]}


def test_a_plugin_named_later_still_decides_what_is_a_scalar(tmp_path: Path) -> None:
    """Values the fast path has learned to read as scalars stop being read once the tag's plugin changes."""
    scalar = [tensor_event("x", _proto("DT_FLOAT", float_val=[float(s)]), s) for s in range(50)]
    custom = [tensor_event("x", _proto("DT_FLOAT", float_val=[50.0]), 50, "custom")]
    more = [tensor_event("x", _proto("DT_FLOAT", float_val=[float(s)]), s) for s in range(51, 60)]
    back = [tensor_event("x", _proto("DT_FLOAT", float_val=[60.0]), 60, "scalars")]
    write_events(tmp_path, *scalar, *custom, *more, *back)
    assert [step for step, _, _ in read_scalars(tmp_path)["x"]] == [*range(50), 60]


def test_tf2_scalar_pb_of_every_dtype_the_summary_api_accepts(tmp_path: Path) -> None:
    events = []
    for step in range(20):
        for dtype in ("float32", "float64", "float16", "int32", "int64"):
            summary = scalar_pb(f"v/{dtype}", np.array(step / 4, dtype=dtype) if "float" in dtype else step)
            events.append(event_pb2.Event(step=step, wall_time=3000.0 + step, summary=summary))
    write_events(tmp_path, *events)
    series = read_scalars(tmp_path)
    assert sorted(series) == [f"v/{d}" for d in ("float16", "float32", "float64", "int32", "int64")]
    for tag, points in series.items():
        expected = [float(s) if tag.endswith("int32") or tag.endswith("int64") else s / 4 for s in range(20)]
        assert [(step, value) for step, _, value in points] == list(zip(range(20), expected, strict=True)), tag


def test_our_writer_read_back_matches_event_accumulator(tmp_path: Path) -> None:
    from bidviz.writers import EventWriter

    with EventWriter(tmp_path) as writer:
        for step in range(3000):
            writer.add_scalar("a", np.sin(step), step)
            writer.add_scalar("b" * 200, float(step) if step % 100 else float("nan"), step * 1000)
            if step % 500 == 0:
                writer.add_text("noise", "text", step)
                writer.add_scalars("pair", {"x": step, "y": -step}, step)
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = read_scalars(tmp_path)
    assert sorted(series) == sorted(accumulator.Tags()["scalars"])
    for tag, points in series.items():
        expected = [(event.step, event.wall_time, event.value) for event in accumulator.Scalars(tag)]
        np.testing.assert_array_equal(np.array(points), np.array(expected))


def test_real_tf_summary_files(tmp_path: Path) -> None:
    import tensorflow as tf  # a test extra: the real writer, not a copy of its format

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(5):
            tf.summary.scalar("loss", 0.5 * step, step=step)
            tf.summary.scalar("count", tf.constant(step, dtype=tf.int64), step=step)
    writer.close()
    series = read_scalars(tmp_path)
    assert [(step, value) for step, _, value in series["loss"]] == [(s, 0.5 * s) for s in range(5)]
    assert [(step, value) for step, _, value in series["count"]] == [(s, float(s)) for s in range(5)]


def test_read_events_gives_every_kind(tmp_path: Path) -> None:
    from bidviz.writers import EventWriter

    with EventWriter(tmp_path) as writer:
        writer.add_histogram("h", [1.0, 2.0], 1)
        writer.add_image("i", np.zeros((2, 2)), 2, dataformats="HW")
        writer.add_text("t", "x", 3)
    kinds = [(e.step, e.summary.value[0].WhichOneof("value")) for _, e in read_events(tmp_path) if e.summary.value]
    assert kinds == [(1, "histo"), (2, "image"), (3, "tensor")]

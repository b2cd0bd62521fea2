"""ScalarDecoder.feed_buffer (numpy over a whole read) against ScalarDecoder.feed (a record at a time, the reader as
it was): the same series, point for point and bit for bit, on files from every writer and on random ones."""

from __future__ import annotations

import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorboardX
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch.utils.tensorboard import SummaryWriter as TorchSummaryWriter

from bidviz.writers import EventWriter, read_scalars
from bidviz.writers.reader import ScalarDecoder, Series, event_files
from bidviz.writers.record_buffers import iter_record_buffers
from bidviz.writers.records import frame, iter_record_batches
from bidviz.writers.tail import EventTail


class Counting(ScalarDecoder):
    """A ScalarDecoder that counts the records it decoded one at a time (`feed`), not by numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.one_at_a_time = 0

    def feed(self, file: str, batch: list[tuple[int, bytes]]) -> None:
        self.one_at_a_time += len(batch)
        super().feed(file, batch)


def per_record(run: Path) -> Series:
    """The reader as it was: iter_record_batches and feed."""
    decoder = ScalarDecoder()
    for file in event_files(run):
        for batch in iter_record_batches(file):
            decoder.feed(file, batch)
    return decoder.series


def buffered(run: Path, read_size: int = 1 << 22) -> tuple[Series, int]:
    """iter_record_buffers and feed_buffer; and how many records still went through `feed`."""
    decoder = Counting()
    for file in event_files(run):
        for records in iter_record_buffers(file, read_size=read_size):
            decoder.feed_buffer(file, records)
    return decoder.series, decoder.one_at_a_time


def exact(series: Series) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Tags in order, each point as (step's type, step, wall_time's bits, value's bits): NaN equals NaN only with
    the same bits, -0.0 differs from 0.0."""
    bits = struct.Struct("<d").pack
    return [
        (tag, [(type(s), s, type(w), bits(w), type(v), bits(v)) for s, w, v in points])
        for tag, points in series.items()
    ]


def assert_same(run: Path, *, read_size: int = 1 << 22, at_most_one_at_a_time: int | None = None) -> Series:
    expected = per_record(run)
    got, one_at_a_time = buffered(run, read_size)
    assert exact(got) == exact(expected)
    assert exact(read_scalars(run)) == exact(expected)
    if at_most_one_at_a_time is not None:
        assert one_at_a_time <= at_most_one_at_a_time
    return expected


def only_file(run: Path) -> Path:
    (file,) = run.glob("*tfevents*")
    return file


def write_events(run: Path, events: list[event_pb2.Event]) -> Path:
    """Events through TensorBoard's own EventFileWriter (what TF2 writers produce)."""
    writer = EventFileWriter(str(run))
    for event in events:
        writer.add_event(event)
    writer.close()
    return only_file(run)


def frame_events(run: Path, events: list[event_pb2.Event]) -> Path:
    """The same bytes EventFileWriter writes, framed here: no thread, for the many files hypothesis makes."""
    run.mkdir(parents=True, exist_ok=True)
    file = run / "events.out.tfevents.1.test"
    file.write_bytes(b"".join(frame(e.SerializeToString()) for e in events))
    return file


def tensor(dtype: str, value: float, encoding: str = "content", shape: tuple[int, ...] = ()) -> tensor_pb2.TensorProto:
    numpy_dtype = {"DT_FLOAT": "<f4", "DT_DOUBLE": "<f8", "DT_INT32": "<i4", "DT_INT64": "<i8", "DT_HALF": "<f2"}
    with np.errstate(over="ignore"):  # a float64 past float32's range is an infinity, as TensorFlow makes it
        array = np.array(value, dtype=numpy_dtype[dtype])
    dims = tensor_shape_pb2.TensorShapeProto(dim=[{"size": s} for s in shape])
    if encoding == "content":
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=dims, tensor_content=array.tobytes())
    field = {"DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_INT32": "int_val", "DT_INT64": "int64_val"}
    if dtype == "DT_HALF":
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=dims, half_val=[int(array.view(np.uint16))])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=dims, **{field[dtype]: [array.item()]})


def tensor_value(tag: str, proto: tensor_pb2.TensorProto, plugin: str | None = None) -> summary_pb2.Summary.Value:
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
    return summary_pb2.Summary.Value(tag=tag, tensor=proto, metadata=metadata if plugin else None)


def event(step: int, *values: summary_pb2.Summary.Value, wall: float | None = None) -> event_pb2.Event:
    wall_time = 1.7e9 + step / 8 if wall is None else wall
    return event_pb2.Event(step=step, wall_time=wall_time, summary=summary_pb2.Summary(value=list(values)))


def simple(tag: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


# -- files from the writers people use ------------------------------------------------------------------------------


def test_our_writer(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        for step in range(5000):
            for k in range(4):
                writer.add_scalar(f"train/loss{k}", 1.0 / (step + 1) + k, step)
    series = assert_same(tmp_path, at_most_one_at_a_time=0)
    assert [len(points) for points in series.values()] == [5000] * 4


def test_tensorboardx_and_torch(tmp_path: Path) -> None:
    tbx = tensorboardX.SummaryWriter(str(tmp_path / "tbx"))
    torch = TorchSummaryWriter(str(tmp_path / "torch"))
    for step in range(3000):
        tbx.add_scalar("loss", step * 0.25, step)
        tbx.add_scalar("acc", float("nan") if step % 100 == 7 else step / 3000, step)
        torch.add_scalar("simple", step + 0.5, step)
        torch.add_scalar("tensor", step + 0.25, step, new_style=True)
        torch.add_scalar("double", 0.1 * step, step, new_style=True, double_precision=True)
    tbx.close()
    torch.close()
    assert_same(tmp_path / "tbx", at_most_one_at_a_time=0)
    series = assert_same(tmp_path / "torch")
    assert [p[2] for p in series["double"][:3]] == [0.0, 0.1, 0.2]


def test_tf2_tensor_scalars_with_metadata_only_on_each_tags_first_value(tmp_path: Path) -> None:
    events = []
    for step in range(4000):
        for tag in ("loss", "val/accuracy", "lr"):
            summary = scalar_pb(tag, step / 7)
            if step:
                summary.value[0].ClearField("metadata")
            events.append(event_pb2.Event(step=step, wall_time=1.7e9 + step, summary=summary))
    write_events(tmp_path, events)
    series = assert_same(tmp_path, at_most_one_at_a_time=0)
    assert len(series["lr"]) == 4000


def test_real_tf_summary_writer(tmp_path: Path) -> None:
    import tensorflow as tf  # a test extra: the real writer

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(700):
            tf.summary.scalar("loss", 0.5 * step, step=step)
            tf.summary.scalar("count", tf.constant(step, dtype=tf.int64), step=step)  # 8 bytes: one at a time
    writer.close()
    series = assert_same(tmp_path)
    assert [p[2] for p in series["count"][:3]] == [0.0, 1.0, 2.0]


def test_a_mixed_run_of_every_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with EventWriter(tmp_path) as writer:
        writer.add_hparams({"lr": 0.01, "optimizer": "adam"}, {"hparams/loss": 0.5})
        for step in range(2500):
            writer.add_scalar("loss", float(rng.normal()), step)
            writer.add_scalar("x" * (1 + step % 40), float(step), step)  # tags of many lengths
            if step % 10 == 0:
                writer.add_histogram("weights", rng.normal(size=100), step)
            if step % 97 == 0:
                writer.add_image("pixels", rng.uniform(size=(3, 16, 16)), step)
            if step % 13 == 0:
                writer.add_text("notes", f"step {step}", step)
                writer.add_scalars("pair", {"a": step, "b": -step}, step)  # several values in one summary
    series = assert_same(tmp_path)
    assert len(series["loss"]) == 2500 and len(series["pair/a"]) == len(range(0, 2500, 13))


# -- what the fast path has to get right ----------------------------------------------------------------------------

BOUNDARIES = [1 << 7, 1 << 14, 1 << 21, 1 << 28, 1 << 35]


def test_steps_across_every_varint_size_and_negative(tmp_path: Path) -> None:
    steps = [b + d for b in BOUNDARIES for d in (-2, -1, 0, 1)] + [0, 1, -1, -(1 << 40), 1 << 62]
    events = [event(s, simple(f"t{k}", s / 3)) for s in steps for k in range(4)] * 40
    frame_events(tmp_path, events)
    series = assert_same(tmp_path)
    assert [p[0] for p in series["t0"][: len(steps)]] == steps


def test_tags_of_every_length_and_records_past_1024_bytes(tmp_path: Path) -> None:
    tags = ["a" * n for n in (1, 2, 7, 8, 9, 15, 16, 17, 100, 127, 128, 129, 500, 1000, 1100, 3000)]
    events = [event(step, simple(tag, step + len(tag))) for step in range(60) for tag in tags]
    frame_events(tmp_path, events)
    series = assert_same(tmp_path)
    assert sorted(map(len, series)) == sorted(map(len, tags)) and all(len(p) == 60 for p in series.values())


@pytest.mark.parametrize("dtype", ["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64", "DT_HALF"])
@pytest.mark.parametrize("encoding", ["content", "val"])
def test_tensor_dtypes_and_encodings(tmp_path: Path, dtype: str, encoding: str) -> None:
    special = [float("nan"), float("inf"), float("-inf"), -0.0] if "INT" not in dtype else [0, -1, 2**31 - 1]
    values = [*special, *(v / 3 if "INT" not in dtype else -v * 1000 for v in range(600))]
    events = [
        event(i + 1, tensor_value("x", tensor(dtype, v, encoding), "scalars" if i == 0 else None))
        for i, v in enumerate(values)
    ]
    frame_events(tmp_path, events)
    series = assert_same(tmp_path)
    assert len(series["x"]) == len(values)


def test_simple_values_nan_and_infinities(tmp_path: Path) -> None:
    values = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 3.4e38, 1e-45]
    events = [event(step, simple("v", values[step % len(values)])) for step in range(1, 2000)]
    frame_events(tmp_path, events)
    series = assert_same(tmp_path, at_most_one_at_a_time=0)
    assert math.isnan(series["v"][6][2]) and series["v"][0][2] == float("inf")


def test_a_plugin_named_after_some_values_changes_what_follows(tmp_path: Path) -> None:
    """A tag's plugin metadata arrives after some of its values (a clear of every key the fast path knows), while
    another tag's scalars go on around it; then the plugin changes back."""

    def x(step: int, plugin: str | None = None) -> event_pb2.Event:
        return event(step, tensor_value("x", tensor("DT_FLOAT", step, "val"), plugin))

    events = []
    for step in range(3000):
        events.append(event(step, simple("loss", step / 2)))
        if step in (1000, 1001):
            events.append(x(step, "custom"))  # from here x's tensors are not scalars
        elif step == 2000:
            events.append(x(step, "scalars"))
        else:
            events.append(x(step))
    frame_events(tmp_path, events)
    series = assert_same(tmp_path)
    assert [p[0] for p in series["x"]] == [*range(1000), *range(2000, 3000)]
    assert len(series["loss"]) == 3000


def test_several_values_in_one_summary_and_events_without_wall_time_or_step(tmp_path: Path) -> None:
    events = []
    for step in range(1500):
        events.append(event(step, simple("a", step), simple("b", -step)))
        events.append(event(step, simple("c", step * 2), wall=0.0 if step % 5 == 0 else None))
        events.append(event(0, simple("d", step)))
    events.insert(700, event_pb2.Event(wall_time=5.0, file_version="brain.Event:2"))
    frame_events(tmp_path, events)
    series = assert_same(tmp_path)
    assert [len(series[t]) for t in "abcd"] == [1500] * 4


def test_reads_of_every_size(tmp_path: Path) -> None:
    """Buffers end anywhere: some are big enough for numpy, some are read a record at a time."""
    events = [event(step, simple(f"t{step % 3}", step)) for step in range(20000)]
    frame_events(tmp_path, events)
    for read_size in (1 << 22, 50_000, 20_000, 5000):
        assert_same(tmp_path, read_size=read_size)


# -- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shift", "reason"), [(2, "length"), (10, "length"), (12, "data"), (-5, "data"), (-2, "data")])
def test_a_corrupted_byte_in_a_long_file(tmp_path: Path, shift: int, reason: str) -> None:
    with EventWriter(tmp_path) as writer:
        for step in range(5000):
            writer.add_scalar("loss", step, step)
    file = only_file(tmp_path)
    data = bytearray(file.read_bytes())
    offsets = record_offsets(bytes(data))
    record = offsets[3000]
    data[record + shift if shift >= 0 else offsets[3001] + shift] ^= 0x04
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(f"{file}: corrupted record at byte offset {record} ({reason}")):
        read_scalars(tmp_path)


def test_a_malformed_event_with_a_right_checksum_is_named(tmp_path: Path) -> None:
    events = [event(step, simple("loss", step)).SerializeToString() for step in range(2000)]
    events.insert(1500, b"\x09\x00\x00")  # a wall time cut short
    tmp_path.joinpath("events.out.tfevents.1.bad").write_bytes(b"".join(map(frame, events)))
    offset = sum(len(e) + 16 for e in events[:1500])
    with pytest.raises(ValueError, match=f"record at byte offset {offset} is not an Event"):
        read_scalars(tmp_path)


def test_a_truncated_tail_warns_and_keeps_every_earlier_point(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        for step in range(3000):
            writer.add_scalar("loss", step, step)
    file = only_file(tmp_path)
    whole = file.read_bytes()
    last = record_offsets(whole)[-1]
    file.write_bytes(whole[:-6])
    with pytest.warns(UserWarning, match=re.escape(f"{file}: skipped a truncated record at byte offset {last}")):
        series = read_scalars(tmp_path)
    assert [p[0] for p in series["loss"]] == list(range(2999))


def test_an_empty_file_and_only_a_version_record(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "events.out.tfevents.0.x").write_bytes(b"")
    EventWriter(tmp_path / "version").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_scalars(tmp_path / "empty") == {} == read_scalars(tmp_path / "version")


def record_offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack_from("<Q", data, offset)[0]
    return offsets


# -- the tail -------------------------------------------------------------------------------------------------------


def test_a_tail_polled_as_the_file_grows_reads_what_a_full_read_reads(tmp_path: Path) -> None:
    tail = EventTail(tmp_path)
    writer = EventWriter(tmp_path, flush_secs=60)
    seen = 0
    for chunk in (3, 600, 1, 2000, 50, 5000, 700):
        for step in range(seen, seen + chunk):
            writer.add_scalar("loss", step / 3, step)
            if step % 7 == 0:
                writer.add_scalar("acc", step / 1000, step)
        seen += chunk
        writer.flush()
        tail.poll()
    writer.close()
    tail.poll()
    assert exact(tail.series) == exact(per_record(tmp_path))


def test_a_tail_keeps_the_points_before_a_corrupt_record_once(tmp_path: Path) -> None:
    records = [frame(event(step, simple("loss", step)).SerializeToString()) for step in range(3000)]
    bad = bytearray(records[2000])
    bad[-1] ^= 0xFF
    records[2000] = bytes(bad)
    tmp_path.joinpath("events.out.tfevents.1.x").write_bytes(b"".join(records))
    tail = EventTail(tmp_path)
    for _ in range(2):
        with pytest.raises(ValueError, match="data checksum mismatch"):
            tail.poll()
        assert [p[0] for p in tail.series["loss"]] == list(range(2000))


# -- random runs ----------------------------------------------------------------------------------------------------

STEPS = st.one_of(  # mostly steps the fast path reads (up to 5 bytes), and some it leaves to a full decode
    st.integers(0, 300),
    st.integers(0, 1 << 36),
    st.sampled_from([b + d for b in BOUNDARIES for d in (-1, 0)]),
    st.integers(-(1 << 63), (1 << 63) - 1),
)
VALUES = st.one_of(st.floats(width=32), st.floats(), st.sampled_from([float("nan"), -0.0]))
TAGS = st.sampled_from(["a", "loss", "val/acc", "b" * 40, "c" * 300])


KINDS = st.one_of(
    st.tuples(st.sampled_from(["simple", "histogram", "text"]), TAGS),
    st.tuples(
        st.just("tensor"),
        TAGS,
        st.sampled_from(["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64", "DT_HALF"]),
        st.sampled_from(["content", "val"]),
        st.sampled_from([(), (1,), (2,)]),
        st.sampled_from([None, "scalars", "custom"]),
    ),
)


def summary_value(kind: tuple[Any, ...], value: float) -> summary_pb2.Summary.Value:
    """A value of one of the KINDS: a simple value, a histogram, a text, or a tensor of some dtype, encoding and
    shape ((2,): a shape that says 2 around one value), with the metadata of some plugin or none."""
    name, tag = kind[0], kind[1]
    if name == "simple":
        return simple(tag, value)
    if name == "histogram":
        histogram = summary_pb2.HistogramProto(min=0.0, max=1.0, num=2, bucket_limit=[1.0], bucket=[2.0])
        return summary_pb2.Summary.Value(tag=tag, histo=histogram)
    if name == "text":
        return tensor_value(tag, tensor_pb2.TensorProto(dtype="DT_STRING", string_val=[b"hello"]), "text")
    dtype, encoding, shape, plugin = kind[2:]
    if "INT" in dtype:
        value = int(max(-1e9, min(1e9, value))) if math.isfinite(value) else 7
    elif dtype == "DT_HALF" and math.isfinite(value):
        value = max(-6e4, min(6e4, value))
    proto = tensor(dtype, value, encoding)
    if shape:
        proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[{"size": s} for s in shape]))
    return tensor_value(tag, proto, plugin)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=st.lists(st.lists(KINDS, min_size=1, max_size=3), min_size=1, max_size=6),
    script=st.lists(
        st.tuples(st.integers(0, 5), STEPS, VALUES, st.sampled_from([True, True, True, False])), min_size=1, max_size=40
    ),
    stride=st.sampled_from([0, 1, 100, 1 << 20]),
    read_size=st.sampled_from([1 << 22, 30_000]),
)
def test_random_runs_read_the_same_both_ways(
    tmp_path: Path,
    kinds: list[list[tuple[Any, ...]]],
    script: list[tuple[int, int, float, bool]],
    stride: int,
    read_size: int,
) -> None:
    """Events of a few kinds (each one or more summary values), in a random order with random steps and values,
    mostly with a wall time; the script repeated, each time `stride` steps on, past the number of records the
    reader hands to numpy."""
    events: list[event_pb2.Event] = []
    while len(events) < 600:
        for index, step, value, with_wall in script:
            values = [summary_value(kind, value) for kind in kinds[index % len(kinds)]]
            step = min(step + stride * (len(events) // len(script)), (1 << 63) - 1)
            events.append(event(step, *values, wall=None if with_wall else 0.0))
    run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    frame_events(run, events)
    assert_same(run, read_size=read_size)

"""EventWriter: its bytes against protobuf's, every kind through TensorBoard's own loaders, threads, exit."""

from __future__ import annotations

import gc
import io
import math
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.plugins.text.summary_v2 import text_pb

from bidviz.writers import EventWriter, read_events, read_scalars

GUIDANCE = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}  # 0: keep every value


def records(file: Path) -> list[bytes]:
    """The data of each TFRecord, walked independently of our reader (lengths only, no checksums)."""
    data = file.read_bytes()
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        out.append(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
    assert offset == len(data)
    return out


def accumulate(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance=GUIDANCE)
    accumulator.Reload()
    return accumulator


SCALARS = [0.0, -0.0, 1.5, -2.25, 3, 1e-45, 3.4e38, 1e300, -1e300, float("nan"), float("inf"), float("-inf")]
STEPS = [None, 0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**40, 2**63 - 1, -1, -(2**63)]
TAGS = ["loss", "", "ünï/€ tag", "x" * 300]


def test_scalar_fast_path_is_byte_for_byte_protobuf(tmp_path: Path) -> None:
    cases = [(tag, value, step) for tag in TAGS for value in SCALARS for step in STEPS]
    with EventWriter(tmp_path) as writer:
        for index, (tag, value, step) in enumerate(cases):
            writer.add_scalar(tag, value, step, walltime=1_700_000_000.25 + index)
        writer.add_scalar("no walltime", 1.0, 5)
        writer.add_scalar("zero walltime", 1.0, 5, walltime=0.0)
        writer.add_scalar("numpy", np.float32(0.5), np.int64(7), walltime=1.0)
        writer.add_scalar("torch", torch.tensor(0.25), torch.tensor(8), walltime=1.0)
    (file,) = tmp_path.iterdir()
    written = records(file)[1:]
    for index, (tag, value, step) in enumerate(cases):
        value_pb = summary_pb2.Summary.Value(tag=tag, simple_value=value)
        expected = event_pb2.Event(wall_time=1_700_000_000.25 + index, step=step or 0, summary={"value": [value_pb]})
        assert written[index] == expected.SerializeToString(), (tag, value, step)
    *_, no_walltime, zero_walltime, numpy, torch_values = written
    parsed = event_pb2.Event.FromString(no_walltime)
    assert time.time() - 60 < parsed.wall_time <= time.time()
    expected = event_pb2.Event(wall_time=parsed.wall_time, step=5, summary={"value": [{"tag": "no walltime"}]})
    expected.summary.value[0].simple_value = 1.0
    assert no_walltime == expected.SerializeToString()
    assert event_pb2.Event.FromString(zero_walltime).wall_time == 0.0  # bytes: test_zero_walltime_record_parses
    for data, tag, value, step in [(numpy, "numpy", 0.5, 7), (torch_values, "torch", 0.25, 8)]:
        value_pb = summary_pb2.Summary.Value(tag=tag, simple_value=value)
        assert data == event_pb2.Event(wall_time=1.0, step=step, summary={"value": [value_pb]}).SerializeToString()


class _Floaty:
    """Not a float, not an int: only `__float__`."""

    def __float__(self) -> float:
        return 2.5


class _Indexy:
    """Only `__index__`: float() takes it, as protobuf's own conversion does."""

    def __index__(self) -> int:
        return 12


ODD_VALUES = [
    ("1.5", 1.5),  # float() takes strings and bytes; struct does not: the general way
    (b"-2", -2.0),
    (True, 1.0),
    (Decimal("0.1"), 0.1),
    (Fraction(1, 3), 1 / 3),
    (_Floaty(), 2.5),
    (_Indexy(), 12.0),
    (2**70, float(2**70)),  # an int past float32: an infinity, as protobuf stores it
    (np.float64(1e300), math.inf),
    (np.int64(-(2**40)), float(-(2**40))),
    (np.float16(0.1), float(np.float16(0.1))),
    (np.bool_(True), 1.0),
    (torch.tensor(1e39, dtype=torch.float64), math.inf),
    (torch.tensor([3.0]), 3.0),
]


@pytest.mark.parametrize("how", ["add_scalar", "scalar_writer"])
def test_values_of_any_type_float_takes_are_written_as_protobuf_and_others_refused_writing_nothing(
    tmp_path: Path, how: str
) -> None:
    steps = [1, 200, 20_000, 2**22, 0, -5]  # every width of the fast path, and past it
    odd_steps = [(np.int32(300), 300), (torch.tensor(70_000), 70_000), (True, 1), (None, 0), (7.9, 7), ("12", 12)]
    with EventWriter(tmp_path) as writer:

        def write(tag: str, value: Any, step: Any) -> None:
            if how == "add_scalar":
                writer.add_scalar(tag, value, step, walltime=2.5)
            else:
                writer.scalar_writer(tag)(value, step, 2.5)

        for bad, error in [(10**400, OverflowError), ("abc", ValueError), (None, TypeError), (object(), TypeError)]:
            with pytest.raises(error):
                write("bad", bad, 3)
        for step, error in [("x", ValueError), (2**63, ValueError), (-(2**63) - 1, ValueError), ([], TypeError)]:
            with pytest.raises(error):
                write("bad", 1.0, step)
        with pytest.raises(ValueError, match="int64"):
            writer.add_text("bad", "every kind checks its step", 2**64)
        for value, _ in ODD_VALUES:
            for step in steps:
                write("odd", value, step)
        for step, _ in odd_steps:
            write("steps", 0.5, step)
    (file,) = tmp_path.iterdir()
    written = records(file)[1:]
    expected = [
        event_pb2.Event(wall_time=2.5, step=step, summary={"value": [{"tag": "odd", "simple_value": value}]})
        for _, value in ODD_VALUES
        for step in steps
    ] + [
        event_pb2.Event(wall_time=2.5, step=step, summary={"value": [{"tag": "steps", "simple_value": 0.5}]})
        for _, step in odd_steps
    ]
    assert len(written) == len(expected)  # nothing of the refused ones
    for data, event in zip(written, expected, strict=True):
        assert data == event.SerializeToString(), event


def test_a_new_tag_at_every_step_keeps_memory_bounded_and_every_value(tmp_path: Path) -> None:
    """A tag per sample or per step (`sample/123`): what add_scalar keeps per tag to write it fast stays bounded."""
    tags = 50_000
    with EventWriter(tmp_path, flush_secs=100) as writer:
        writer.add_scalar("warm", 1.0, 1)
        writer.flush()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(tags):
                writer.add_scalar(f"sample/{i}", i / 2, i)
                if i % 1000 == 999:
                    writer.flush()
            writer.flush()
            kept = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
    assert kept < 8e6, f"{kept / 1e6:.1f} MB kept for {tags} tags"  # ~1 KB a tag if every tag's writer were kept
    series = read_scalars(tmp_path)
    assert len(series) == tags + 1
    assert [series[f"sample/{i}"][0][::2] for i in (0, 4095, 4096, tags - 1)] == [
        (i, i / 2) for i in (0, 4095, 4096, tags - 1)
    ]


def test_a_zero_walltime_is_left_out_as_protobuf_does(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("z", 1.0, 5, walltime=0.0)
    (file,) = tmp_path.iterdir()
    expected = event_pb2.Event(step=5, summary={"value": [{"tag": "z", "simple_value": 1.0}]})
    assert records(file)[1] == expected.SerializeToString()


def test_file_name_and_first_event_are_tensorboards(tmp_path: Path) -> None:
    first, second = EventWriter(tmp_path), EventWriter(tmp_path, filename_suffix=".v2")
    first.close()
    second.close()
    pattern = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+"
    assert re.fullmatch(pattern, Path(first.path).name)
    assert re.fullmatch(pattern + r"\.v2", Path(second.path).name)
    assert first.path != second.path and Path(first.path).parent == tmp_path
    ((_, event),) = list(read_events(first.path))
    assert event.file_version == "brain.Event:2" and time.time() - 60 < event.wall_time <= time.time()


def test_the_file_exists_and_is_readable_before_any_flush(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path / "new" / "run", flush_secs=600)
    try:
        ((_, event),) = list(read_events(writer.path))  # written at once, so TensorBoard lists the run
        assert event.file_version == "brain.Event:2"
    finally:
        writer.close()


def test_every_kind_round_trips_through_event_accumulator(tmp_path: Path) -> None:
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    with EventWriter(tmp_path) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.add_scalars("acc", {"train": 0.5, "val": 0.25}, 4)
        writer.add_histogram("weights", np.arange(10.0), 5)
        writer.add_text("notes", "**bold** ü", 6)
        writer.add_image("pixels", pixels, 7, dataformats="HWC")
        writer.add_hparams({"lr": 0.1, "opt": "adam", "nesterov": False}, {"final": 0.125}, step=9)
    accumulator = accumulate(tmp_path)
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [(e.step, e.value) for e in accumulator.Scalars("acc/train")] == [(4, 0.5)]
    assert [(e.step, e.value) for e in accumulator.Scalars("acc/val")] == [(4, 0.25)]
    (histogram,) = accumulator.Histograms("weights")
    assert (histogram.step, histogram.histogram_value.num, histogram.histogram_value.sum) == (5, 10, 45)
    (text,) = accumulator.Tensors("notes")
    assert (text.step, list(text.tensor_proto.string_val)) == (6, ["**bold** ü".encode()])
    (image,) = accumulator.Images("pixels")
    assert (image.step, image.width, image.height) == (7, 4, 2)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), pixels)
    contents = accumulator.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(contents["_hparams_/session_start_info"]).session_start_info
    assert sorted(start.hparams) == ["lr", "nesterov", "opt"]
    assert (start.hparams["lr"].number_value, start.hparams["opt"].string_value) == (0.1, "adam")
    assert start.hparams["nesterov"].HasField("bool_value") and not start.hparams["nesterov"].bool_value
    assert time.time() - 60 < start.start_time_secs <= time.time()
    assert [(e.step, e.value) for e in accumulator.Scalars("final")] == [(9, 0.125)]  # metric values as scalars
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(writer.path).name]  # no sub-runs


def test_add_scalars_is_one_event(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalars("m", {"a": 1.0, "b": 2.0, "c": float("nan")}, 3, walltime=5.0)
        writer.add_scalars("", {"top": 4.0}, 4, walltime=6.0)
    events = [event for _, event in read_events(tmp_path)][1:]
    assert [[v.tag for v in event.summary.value] for event in events] == [["m/a", "m/b", "m/c"], ["top"]]
    series = read_scalars(tmp_path)
    assert series["m/a"] == [(3, 5.0, 1.0)] and series["m/b"] == [(3, 5.0, 2.0)] and math.isnan(series["m/c"][0][2])
    assert series["top"] == [(4, 6.0, 4.0)]


def test_text_is_tensorboards_own_text_summary_byte_for_byte(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_text("bidviz/notes", "# title\n\nloss is *down* — ok", 3)
    (file,) = tmp_path.iterdir()
    summary = text_pb("bidviz/notes", "# title\n\nloss is *down* — ok").SerializeToString()
    data = records(file)[1]
    assert data.endswith(b"\x2a" + bytes([len(summary)]) + summary)  # field 5 (summary), its length, the bytes


HISTOGRAM_INPUTS = {
    "normal": np.random.default_rng(0).normal(size=10_000),
    "integers": np.arange(-50, 50),
    "one value": np.array([3.0]),
    "zeros and an edge": np.array([0.0, 0.0, 1e-12, -1e-12]),
    "float32 matrix": np.random.default_rng(1).uniform(-5, 5, size=(30, 40)).astype(np.float32),
}


@pytest.mark.parametrize("case", HISTOGRAM_INPUTS)
def test_histogram_matches_tensorboardx_make_histogram(tmp_path: Path, case: str) -> None:
    from tensorboardX.summary import make_histogram

    values = HISTOGRAM_INPUTS[case]
    with EventWriter(tmp_path) as writer:
        writer.add_histogram("h", values, 1)
    (event,) = accumulate(tmp_path).Histograms("h")
    ours = event.histogram_value
    theirs = make_histogram(values.astype(np.float64), _default_bins())
    assert list(ours.bucket_limit) == list(theirs.bucket_limit)
    assert list(ours.bucket) == list(theirs.bucket)
    assert (ours.min, ours.max, ours.num) == (theirs.min, theirs.max, theirs.num)
    assert ours.sum == pytest.approx(theirs.sum, abs=1e-9) and ours.sum_squares == pytest.approx(theirs.sum_squares)


def _default_bins() -> list[float]:
    edges, edge = [], 1e-12
    while edge < 1e20:
        edges.append(edge)
        edge *= 1.1
    return [-e for e in reversed(edges)] + [0.0] + edges


def test_histogram_of_nothing_fails_with_a_sentence(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="at least one value"):
            writer.add_histogram("h", [], 1)
        with pytest.raises(ValueError, match="finite values"):
            writer.add_histogram("h", [float("nan")], 1)


def test_threads_lose_nothing_and_keep_each_threads_order(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_secs=0.01)
    per_thread = 5000
    done = threading.Event()
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for step in range(per_thread):
                writer.add_scalar(f"thread{index}", float(step), step)
                if step % 1000 == 0:
                    writer.add_histogram(f"hist{index}", [step, step + 1.0], step)
        except BaseException as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    def flush_often() -> None:
        while not done.is_set():
            writer.flush()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    flusher = threading.Thread(target=flush_often)
    flusher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    flusher.join()
    writer.close()
    assert errors == []
    series = read_scalars(tmp_path)
    accumulator = accumulate(tmp_path)
    for index in range(4):
        assert [step for step, _, _ in series[f"thread{index}"]] == list(range(per_thread))
        assert [e.value for e in accumulator.Scalars(f"thread{index}")] == [float(s) for s in range(per_thread)]
        assert len(accumulator.Histograms(f"hist{index}")) == per_thread // 1000


def test_close_is_idempotent_and_later_writes_raise(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    writer.close()
    assert writer.closed and "closed" in repr(writer)
    for call in (
        lambda: writer.add_scalar("x", 2.0, 2),
        lambda: writer.add_text("t", "x", 2),
        lambda: writer.add_scalars("m", {"a": 1.0}, 2),
    ):
        with pytest.raises(RuntimeError, match="is closed"):
            call()
    writer.flush()  # harmless
    assert read_scalars(tmp_path) == {"x": [(1, read_scalars(tmp_path)["x"][0][1], 1.0)]}


def test_background_flush_within_flush_secs(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_secs=0.2)
    try:
        writer.add_scalar("live", 1.0, 1)
        start = time.monotonic()
        while "live" not in read_scalars(tmp_path):
            assert time.monotonic() - start < 10, "not flushed in the background"
            time.sleep(0.02)
        writer.add_scalar("live", 2.0, 2)  # and again: the flusher keeps going
        while len(read_scalars(tmp_path)["live"]) < 2:
            assert time.monotonic() - start < 10, "not flushed in the background the second time"
            time.sleep(0.02)
    finally:
        writer.close()


def test_a_long_flush_interval_holds_values_until_flush(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_secs=600)
    try:
        writer.add_scalar("held", 1.0, 1)
        assert read_scalars(tmp_path) == {}
        writer.flush()
        assert [value for _, _, value in read_scalars(tmp_path)["held"]] == [1.0]
    finally:
        writer.close()


def test_a_large_backlog_is_written_without_waiting_for_flush_secs(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_secs=600)
    try:
        for step in range(60_000):  # about 2.4 MB of records: past the backlog limit
            writer.add_scalar("bulk", float(step), step)
        start = time.monotonic()
        while os.path.getsize(writer.path) < 1_000_000:
            assert time.monotonic() - start < 10, "the backlog was not written"
            time.sleep(0.02)
    finally:
        writer.close()
    assert len(read_scalars(tmp_path)["bulk"]) == 60_000


EXIT_SCRIPT = """
import sys
from bidviz.writers import EventWriter
kept = EventWriter(sys.argv[1] + "/kept", flush_secs=600)
dropped = EventWriter(sys.argv[1] + "/dropped", flush_secs=600)
for step in range(1000):
    kept.add_scalar("x", float(step), step)
    dropped.add_scalar("y", float(step), step)
dropped = None  # collected without close()
import gc; gc.collect()
sys.exit(0)  # and `kept` is never closed
"""


def test_nothing_is_lost_at_interpreter_exit_without_close(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)], check=True, timeout=120)
    for run, tag in (("kept", "x"), ("dropped", "y")):
        events = accumulate(tmp_path / run).Scalars(tag)
        assert [(e.step, e.value) for e in events] == [(s, float(s)) for s in range(1000)], run


def test_a_collected_writer_flushes_and_closes_its_file(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_secs=600)
    writer.add_scalar("x", 1.0, 1)
    path = writer.path
    del writer
    gc.collect()
    assert [value for _, _, value in read_scalars(path)["x"]] == [1.0]


def test_flush_secs_zero_writes_every_call_through(tmp_path: Path) -> None:
    with EventWriter(tmp_path, flush_secs=0) as writer:
        writer.add_scalar("now", 1.0, 1)
        assert [v for _, _, v in read_scalars(tmp_path)["now"]] == [1.0]
        writer.add_text("t", "x", 1)
        assert len(list(read_events(tmp_path))) == 3


def test_hparams_reject_values_the_plugin_cannot_hold(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="hparam 'layers' must be a bool, int, float or str; got list"):
            writer.add_hparams({"layers": [1, 2]})


# -- TensorBoard's Rust data server ---------------------------------------------------------------------------------


@pytest.fixture
def rust_provider(tmp_path: Path) -> Any:
    """A TensorBoard data provider backed by TensorBoard's Rust data server, reading `tmp_path/logs`."""
    grpc = pytest.importorskip("grpc")
    server = pytest.importorskip("tensorboard_data_server")
    from tensorboard.data import grpc_provider
    from tensorboard.data.proto import data_provider_pb2_grpc

    binary = server.server_binary()
    if binary is None:
        pytest.skip("tensorboard-data-server has no binary for this platform")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [binary, f"--logdir={logdir}", "--reload=1", "--port=0", f"--port-file={port_file}", "--die-after-stdin"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            assert process.poll() is None and time.monotonic() < deadline, "the data server did not start"
            time.sleep(0.05)
        address = f"localhost:{int(port_file.read_text())}"
        channel = grpc.insecure_channel(address)
        stub = data_provider_pb2_grpc.TensorBoardDataProviderStub(channel)
        yield logdir, grpc_provider.GrpcDataProvider(address, stub)
        channel.close()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def test_every_kind_through_tensorboards_rust_data_server(rust_provider: Any) -> None:
    from tensorboard import context

    logdir, provider = rust_provider
    with EventWriter(logdir / "run") as writer:
        for step in range(5):
            writer.add_scalar("loss", 0.5**step, step)
        writer.add_scalars("acc", {"train": 0.75}, 5)
        writer.add_histogram("weights", np.arange(10.0), 5)
        writer.add_text("notes", "hello", 6)
        writer.add_image("pixels", np.zeros((2, 3)), 7, dataformats="HW")
        writer.add_hparams({"lr": 0.1}, ["loss"])
    ctx = context.RequestContext()

    def read(kind: str, plugin: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            found = getattr(provider, f"read_{kind}")(ctx, experiment_id="", plugin_name=plugin, downsample=100).get(
                "run", {}
            )
            if found or time.monotonic() > deadline:
                return dict(found)
            time.sleep(0.2)

    scalars = read("scalars", "scalars")
    assert [(d.step, d.value) for d in scalars["loss"]] == [(s, 0.5**s) for s in range(5)]
    assert [(d.step, d.value) for d in scalars["acc/train"]] == [(5, 0.75)]
    histograms = read("tensors", "histograms")
    ((datum,),) = histograms.values()
    assert datum.step == 5 and datum.numpy[:, 2].sum() == 10  # (left, right, count) rows
    texts = read("tensors", "text")
    assert [(d.step, d.numpy.item()) for d in texts["notes"]] == [(6, b"hello")]
    hparams = read("tensors", "hparams")
    assert sorted(hparams) == ["_hparams_/experiment", "_hparams_/session_start_info"]
    images = read("blob_sequences", "images")
    ((blob_datum,),) = images.values()
    width, height, png = (provider.read_blob(ctx, blob_key=ref.blob_key) for ref in blob_datum.values)
    assert (blob_datum.step, width, height) == (7, b"3", b"2")
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (2, 3)


def test_a_url_is_refused_not_written_to_a_local_folder_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="StoreWriter"):
        EventWriter("s3://bucket/runs/exp")
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/runs/exp


def test_scalar_writer_writes_add_scalars_bytes_at_the_current_wall_time(tmp_path: Path) -> None:
    """The Bridge's metrics write through `scalar_writer(tag)`: the same bytes as protobuf's for every tag, value and
    step add_scalar takes (numpy and torch ones included), and refused once the writer is closed."""
    cases = [(tag, value, step) for tag in TAGS for value in SCALARS for step in STEPS]
    cases += [("numpy", np.float32(0.5), np.int64(7)), ("torch", torch.tensor(0.25), torch.tensor(8))]
    before = time.time()
    with EventWriter(tmp_path) as writer:
        writes = {tag: writer.scalar_writer(tag) for tag in {tag for tag, _, _ in cases}}
        for tag, value, step in cases:
            writes[tag](value, step)
    (file,) = tmp_path.iterdir()
    written = records(file)[1:]
    assert len(written) == len(cases)
    for data, (tag, value, step) in zip(written, cases, strict=True):
        wall = event_pb2.Event.FromString(data).wall_time
        assert before <= wall <= time.time()
        value_pb = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        expected = event_pb2.Event(wall_time=wall, step=int(step or 0), summary={"value": [value_pb]})
        assert data == expected.SerializeToString(), (tag, value, step)
    with pytest.raises(RuntimeError, match="closed"):
        writes["loss"](1.0, 1)

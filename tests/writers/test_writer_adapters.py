"""Each kind of value through each adapter, read back with TensorBoard's own EventAccumulator and HParams plugin."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorboardX
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter as TorchSummaryWriter

from bidviz.writers import EventWriter, Writer, as_writer, read_scalars

ADAPTERS = ["own", "EventWriter", "tensorboardX", "torch"]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Writer, Path]]:
    """(writer, run directory) for our own writer and for a user's tensorboardX or torch SummaryWriter."""
    run_dir = tmp_path / "run"
    user: Any = None
    if request.param == "own":
        writer = as_writer(run_dir=run_dir)
    elif request.param == "EventWriter":
        user = EventWriter(run_dir, flush_secs=600)
        writer = as_writer(user)
    elif request.param == "tensorboardX":
        user = tensorboardX.SummaryWriter(str(run_dir))
        writer = as_writer(user)
    else:
        user = TorchSummaryWriter(str(run_dir))
        writer = as_writer(user)
    yield writer, run_dir
    writer.close()
    if user is not None:
        user.close()


def accumulate(writer: Writer, run_dir: Path) -> EventAccumulator:
    """Flush (not close: flush() must suffice for live viewing) and read the run as TensorBoard would."""
    writer.flush()
    guidance = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}  # 0: keep every value
    accumulator = EventAccumulator(str(run_dir), size_guidance=guidance)
    accumulator.Reload()
    return accumulator


def test_scalars_including_non_finite(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    written = [1.5, float("nan"), float("inf"), float("-inf"), -2.25]
    for step, value in enumerate(written):
        writer.add_scalar("bidviz/loss", value, step)
    events = accumulate(writer, run_dir).Scalars("bidviz/loss")
    assert [event.step for event in events] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal([event.value for event in events], written)


def test_tags_are_kept_as_given(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    writer.add_scalar("hparams/lr@1", 0.1, 1)  # tensorboardX's and torch's add_scalar would write 'hparams/lr_1'
    writer.add_histogram("grad norm@1", [1.0, 2.0], 1)
    tags = accumulate(writer, run_dir).Tags()
    assert (tags["scalars"], tags["histograms"]) == (["hparams/lr@1"], ["grad norm@1"])


def test_histogram_of_numpy_and_bfloat16_torch(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    writer.add_histogram("weights", np.arange(12, dtype=np.float64).reshape(3, 4), 7)
    writer.add_histogram("weights", torch.arange(6, dtype=torch.bfloat16).reshape(2, 1, 3), 8)
    events = accumulate(writer, run_dir).Histograms("weights")
    assert [event.step for event in events] == [7, 8]
    first, second = (event.histogram_value for event in events)
    assert (first.num, first.min, first.max, first.sum, sum(first.bucket)) == (12, 0, 11, 66, 12)
    assert (second.num, second.min, second.max, second.sum, sum(second.bucket)) == (6, 0, 5, 15, 6)


def test_text_keeps_its_tag(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    writer.add_text("bidviz/notes", "loss is *down* — ok", 3)
    accumulator = accumulate(writer, run_dir)
    assert accumulator.Tags()["tensors"] == ["bidviz/notes"]  # no '/text_summary' suffix
    (event,) = accumulator.Tensors("bidviz/notes")
    assert event.step == 3
    assert list(event.tensor_proto.string_val) == ["loss is *down* — ok".encode()]
    assert accumulator.SummaryMetadata("bidviz/notes").plugin_data.plugin_name == "text"


IMAGE_CASES = {
    "HW floats in [0, 1] kept": (np.array([[0.0, 0.5], [1.0, 0.25]]), "HW", np.array([[[0], [128]], [[255], [64]]])),
    "HWC uint8 unchanged": (
        np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13,
        "HWC",
        np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13,
    ),
    "CHW floats min-max scaled": (
        np.array([[[-1.0, 0.0, 3.0]]]),
        "CHW",
        np.array([[[0], [64], [255]]]),
    ),
    "constant out of range is zeros": (np.full((2, 2), 7.0), "HW", np.zeros((2, 2, 1))),
    "CHW RGBA torch tensor": (
        torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]], [[0.5, 0.5]], [[1.0, 1.0]]]),
        "CHW",
        np.array([[[0, 255, 128, 255], [255, 0, 128, 255]]]),
    ),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image(adapter: tuple[Writer, Path], case: str) -> None:
    writer, run_dir = adapter
    array, dataformats, expected = IMAGE_CASES[case]
    writer.add_image("pixels", array, 2, dataformats)
    (event,) = accumulate(writer, run_dir).Images("pixels")
    assert (event.step, event.height, event.width) == (2, expected.shape[0], expected.shape[1])
    decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    np.testing.assert_array_equal(decoded.reshape(expected.shape), expected)


@pytest.mark.parametrize(
    ("array", "dataformats", "message"),
    [
        (np.zeros((2, 2)), "NCHW", "dataformats must be one of HW, HWC, CHW"),
        (np.zeros((2, 2)), "HWC", "needs a non-empty 3-D array"),
        (np.zeros((2, 2, 2)), "HWC", "1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels"),
    ],
)
def test_image_misuse_fails_with_a_sentence(tmp_path: Path, array: np.ndarray, dataformats: str, message: str) -> None:
    writer = as_writer(run_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
        writer.add_image("pixels", array, 0, dataformats)
    writer.close()


HPARAMS = {"lr": 0.01, "layers": 3, "optimizer": "adam", "nesterov": True, "momentum": np.float32(0.5)}


def test_hparams_session_in_this_run(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    writer.add_hparams_session(HPARAMS, ["loss", "hparams/lr"])
    contents = accumulate(writer, run_dir).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(contents["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == 0.01
    assert start.hparams["layers"].number_value == 3
    assert start.hparams["optimizer"].string_value == "adam"
    assert start.hparams["nesterov"].bool_value is True  # torch's own hparams() would write the number 1.0
    assert start.hparams["momentum"].number_value == 0.5
    experiment = HParamsPluginData.FromString(contents["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["loss", "hparams/lr"]
    assert sorted(info.name for info in experiment.hparam_infos) == sorted(HPARAMS)
    assert "_hparams_/session_end_info" not in contents  # the run is still going
    assert [path.name for path in run_dir.iterdir() if path.is_dir()] == []  # unlike SummaryWriter.add_hparams


def test_hparams_dashboard_shows_one_session_for_the_run(adapter: tuple[Writer, Path]) -> None:
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client

    writer, run_dir = adapter
    writer.add_hparams_session({"lr": 0.1, "optimizer": "sgd"}, ["loss"])
    writer.add_scalar("loss", 0.5, 1)
    writer.add_scalar("loss", 0.25, 2)
    writer.flush()
    logdir = str(run_dir.parent)
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    context = base_plugin.TBContext(logdir=logdir, data_provider=provider, multiplexer=multiplexer)
    apps = hparams_plugin.HParamsPlugin(context).get_plugin_apps()
    request = {"startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_UNKNOWN"], "colParams": []}
    response = Client(apps["/session_groups"]).post("/", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    (group,) = response.json["sessionGroups"]
    assert (group["name"], group["hparams"]) == ("run", {"lr": 0.1, "optimizer": "sgd"})
    assert [(value["name"]["tag"], value["value"]) for value in group["metricValues"]] == [("loss", 0.25)]


def test_close_of_a_user_writer_only_flushes(tmp_path: Path) -> None:
    user = tensorboardX.SummaryWriter(str(tmp_path), flush_secs=600)
    writer = as_writer(user)
    writer.add_scalar("mine", 1.0, 1)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_scalar("mine", 2.0, 2)
    user.add_scalar("theirs", 3.0, 3)  # still open
    user.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["mine", "theirs"]


def test_close_of_our_own_writer_closes_it(tmp_path: Path) -> None:
    writer = as_writer(run_dir=tmp_path)
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    writer.close()  # twice is fine
    writer.flush()  # so is a late flush
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_text("notes", "late", 2)
    assert len(list(tmp_path.glob("*tfevents*"))) == 1  # a closed tensorboardX writer would start a new file


def test_flush_from_another_thread_while_writing(adapter: tuple[Writer, Path]) -> None:
    writer, run_dir = adapter
    done = threading.Event()
    errors: list[BaseException] = []

    def flush_often() -> None:
        try:
            while not done.is_set():
                writer.flush()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    flusher = threading.Thread(target=flush_often)
    flusher.start()
    for step in range(300):
        writer.add_scalar("x", float(step), step)
    done.set()
    flusher.join()
    assert errors == []
    assert [event.step for event in accumulate(writer, run_dir).Scalars("x")] == list(range(300))


def make_writer(kind: str, run_dir: Path, flush_secs: float) -> tuple[Writer, Any]:
    if kind == "own":
        return as_writer(run_dir=run_dir, flush_secs=flush_secs), None
    if kind == "EventWriter":
        user: Any = EventWriter(run_dir, flush_secs=600)
    elif kind == "tensorboardX":
        user = tensorboardX.SummaryWriter(str(run_dir))
    else:
        user = TorchSummaryWriter(str(run_dir))
    return as_writer(user, flush_secs=flush_secs), user  # the users' writers flush every 120 s by default


@pytest.mark.parametrize("kind", ADAPTERS)
def test_written_values_reach_the_disk_within_flush_secs_without_flush(tmp_path: Path, kind: str) -> None:
    writer, user = make_writer(kind, tmp_path, flush_secs=0.2)
    try:
        seen: dict[str, Any] = {}
        for values in ([1.0, 2.0], [3.0]):  # a burst, then another once the first is on disk: flushed each time
            for value in values:
                writer.add_scalar("live", value, int(value))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(seen.get("live", [])) < value:
                time.sleep(0.05)
                with warnings.catch_warnings():  # the file may end in a record being written
                    warnings.simplefilter("ignore")
                    seen = read_scalars(tmp_path)
        assert [value for _, _, value in seen["live"]] == [1.0, 2.0, 3.0]
    finally:
        writer.close()
        if user is not None:
            user.close()


def test_flush_secs_zero_writes_through(tmp_path: Path) -> None:
    writer = as_writer(run_dir=tmp_path, flush_secs=0)
    writer.add_scalar("now", 3.0, 1)
    assert [value for _, _, value in read_scalars(tmp_path)["now"]] == [3.0]
    writer.close()


def test_run_dir(tmp_path: Path) -> None:
    own = as_writer(run_dir=tmp_path / "own", flush_secs=5)
    tbx = tensorboardX.SummaryWriter(str(tmp_path / "tbx"))
    torch_writer = TorchSummaryWriter(str(tmp_path / "torch"))
    try:
        assert own.run_dir == str(tmp_path / "own")
        assert as_writer(tbx).run_dir == str(tmp_path / "tbx")
        assert as_writer(torch_writer, run_dir=tmp_path / "torch" / ".").run_dir == str(tmp_path / "torch")
        with pytest.raises(ValueError, match="not to the run directory"):
            as_writer(tbx, run_dir=tmp_path / "elsewhere")
    finally:
        own.close()
        tbx.close()
        torch_writer.close()


def test_as_writer_passes_a_writer_through_and_refuses_strangers() -> None:
    class Mine:
        run_dir = None

        def add_scalar(self, tag: str, value: float, step: int) -> None: ...

        def add_hparams_session(self, hparams: dict[str, Any], metric_tags: list[str]) -> None: ...

    mine = Mine()
    assert as_writer(mine) is mine
    with pytest.raises(
        TypeError,
        match=r"got builtins\.dict; expected None, a bidviz\.writers\.EventWriter, a tensorboardX\.SummaryWriter",
    ):
        as_writer({})
    with pytest.raises(ValueError, match="needs run_dir"):
        as_writer()


def test_training_side_never_imports_tensorboard(tmp_path: Path) -> None:
    code = f"""
import sys
from bidviz.writers import as_writer, read_scalars
writer = as_writer(run_dir={str(tmp_path)!r})
writer.add_scalar("a", 1.0, 0)
writer.add_text("t", "x", 0)
writer.add_image("i", [[0.0, 1.0]], 0, "HW")
writer.add_histogram("h", [1.0, 2.0], 0)
writer.add_hparams_session({{"lr": 0.1}}, ["a"])
writer.close()
assert read_scalars({str(tmp_path)!r}) != {{}}
heavy = ("tensorboard", "tensorflow", "PIL", "torch", "tensorboardX")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_default_writer_is_our_event_writer(tmp_path: Path) -> None:
    writer = as_writer(run_dir=tmp_path, flush_secs=0.5)
    try:
        assert isinstance(writer, EventWriter) and writer.flush_secs == 0.5
    finally:
        writer.close()


def test_closing_the_adapter_of_a_users_event_writer_only_flushes_it(tmp_path: Path) -> None:
    user = EventWriter(tmp_path, flush_secs=600)
    writer = as_writer(user, run_dir=tmp_path)
    writer.add_scalar("mine", 1.0, 1)
    writer.close()
    assert [v for _, _, v in read_scalars(tmp_path)["mine"]] == [1.0]
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_scalar("mine", 2.0, 2)
    user.add_scalar("theirs", 3.0, 3)  # still open
    user.close()
    assert [v for _, _, v in read_scalars(tmp_path)["theirs"]] == [3.0]
    with pytest.raises(ValueError, match="not to the run directory"):
        as_writer(EventWriter(tmp_path / "a"), run_dir=tmp_path / "b")


def test_tf_summary_writer(tmp_path: Path) -> None:
    import tensorflow as tf  # a test extra: the adapter is tested over the real tf.summary writer

    tf_writer = tf.summary.create_file_writer(str(tmp_path))
    writer = as_writer(tf_writer, run_dir=tmp_path, flush_secs=0.2)
    writer.add_scalar("loss", 0.5, 1)
    writer.add_text("notes", "hi", 1)
    writer.add_histogram("h", [1.0, 2.0], 1)
    writer.add_hparams_session({"lr": 0.1}, ["loss"])
    writer.close()
    tf_writer.close()
    accumulator = accumulate(writer, tmp_path)
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(1, 0.5)]
    assert accumulator.Tags()["histograms"] == ["h"]

"""Hugging Face: how BIDVizCallback finds the Trainer's TensorBoard writer, through a real `CallbackHandler` and a
real `TensorBoardCallback` (no training): through the `trainer` it is given, the `writer` it is given, or, given
neither, the handler calling it (the last resort in `bidviz.compat`); with no TensorBoard writer, its own."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from integration_checks import event_files

from bidviz.writers import read_scalars

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("transformers") and importlib.util.find_spec("accelerate")),
    reason="transformers and accelerate are not installed",
)


@pytest.fixture
def trainer_parts(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """What a Trainer hands its callbacks, and a TensorBoardCallback holding a torch writer in `tmp_path/tb`."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    tb_writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    yield {
        "args": args,
        "state": TrainerState(),
        "control": TrainerControl(),
        "tb": TensorBoardCallback(tb_writer=tb_writer),
        "tb_writer": tb_writer,
        "tb_dir": tmp_path / "tb",
    }
    tb_writer.close()


def _handler(*callbacks: Any) -> Any:
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    return CallbackHandler([DefaultFlowCallback(), *callbacks], None, None, None, None)


def _train_briefly(handler: Any, parts: dict[str, Any], callback: Any, direct: bool) -> None:
    """`on_train_begin` through the handler (TensorBoard's first, then ours), or ours called directly; one scalar
    each; `on_train_end` the same way."""
    args, state, control = parts["args"], parts["state"], parts["control"]
    handler.on_train_begin(args, state, control)
    if direct:
        callback.on_train_begin(args, state, control)
    assert callback.bridge is not None
    callback.bridge.writer.add_scalar("bidviz/x", 1.0, 1)
    if parts["tb"].tb_writer is not None:
        parts["tb"].tb_writer.add_scalar("train/loss", 0.5, 1)
    handler.on_train_end(args, state, control)
    if direct:
        callback.on_train_end(args, state, control)
    assert callback.bridge is None


@pytest.mark.parametrize("route", ["trainer", "writer", "caller"])
def test_the_bridge_writes_through_the_trainers_tensorboard_writer(trainer_parts: dict[str, Any], route: str) -> None:
    from bidviz.integrations.hf import BIDVizCallback

    if route == "writer":
        callback = BIDVizCallback(writer=trainer_parts["tb_writer"])
    else:
        callback = BIDVizCallback()
    # Through the trainer (or the writer), ours is called directly, so the caller lookup could not find anything.
    handler = _handler(trainer_parts["tb"]) if route != "caller" else _handler(trainer_parts["tb"], callback)
    if route == "trainer":
        callback.trainer = SimpleNamespace(callback_handler=handler)  # what a Trainer offers: its public handler
    _train_briefly(handler, trainer_parts, callback, direct=route != "caller")

    run = trainer_parts["tb_dir"]
    assert len(event_files(run)) == 1, list(run.iterdir())
    series = read_scalars(run)
    assert series["bidviz/x"][0][2] == 1.0 and series["train/loss"][0][2] == 0.5
    assert (run / ".bidviz" / "state.json").exists()


def test_without_a_tensorboard_writer_the_bridge_has_its_own(trainer_parts: dict[str, Any]) -> None:
    from bidviz.integrations.hf import BIDVizCallback

    callback = BIDVizCallback()
    trainer_parts["tb"].tb_writer = None  # not reporting to TensorBoard
    handler = _handler(callback)
    _train_briefly(handler, trainer_parts, callback, direct=False)
    run = Path(trainer_parts["args"].output_dir) / "bidviz"
    assert read_scalars(run)["bidviz/x"][0][2] == 1.0
    assert "bidviz/x" not in read_scalars(trainer_parts["tb_dir"])


def test_a_writer_that_does_not_tell_its_directory_needs_logdir(trainer_parts: dict[str, Any]) -> None:
    from bidviz.integrations.hf import BIDVizCallback

    callback = BIDVizCallback(writer=SimpleNamespace(add_scalar=None, add_hparams_session=None))
    with pytest.raises(ValueError, match="pass logdir= too"):
        callback.on_train_begin(trainer_parts["args"], trainer_parts["state"], trainer_parts["control"])

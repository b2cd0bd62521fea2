"""Hugging Face `transformers.Trainer`: `trainer.add_callback(BIDVizCallback(trainer=trainer))`.

When training begins (the optimizer and LR scheduler exist by then) the bridge binds the optimizer's values (`lr`,
`betas`, `weight_decay`, `eps`...) and the scheduler, so a set `lr` survives the scheduler's next step (it is
rescaled, as in the core). With `report_to="tensorboard"` it writes through the Trainer's own TensorBoard writer,
so its series land in the same run (and event file) as `train/loss`: found among the callbacks of the `trainer`
you give it, or the `writer=` you gave the Trainer's `TensorBoardCallback` too. Given neither (as in
`Trainer(..., callbacks=[BIDVizCallback()])`), it looks for the Trainer among its callers, a last resort
(`bidviz.compat.hf_callbacks_of_caller`). It steps at every `on_step_end` with `state.global_step`; a `stop` sets
`control.should_training_stop`, so the Trainer ends its loop its own way (`on_train_end`, the returned
`TrainOutput`).

Under `torchrun` (or `accelerate launch`) every process runs a bridge on the same run directory: the main
process's choice (`state.is_world_process_zero`; only its TensorBoard callback opens a writer), broadcast once.
Rank 0 leads: it alone reads the mailbox and writes events; every rank applies each command at the same step, so a
set `lr` changes every rank's optimizer and a `stop` ends every rank's loop at the same step (see
`bidviz.bridge.ranks` and docs/distributed.md). Without torch.distributed (several processes joined some other way)
only the main process runs one, as commands could not reach the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from bidviz import compat
from bidviz.bridge.core import Bridge

from ._common import HParamSpecs, job_rank, register_hparams, run_dir_for, run_dir_on_every_rank, writer_dir

__all__ = ["BIDVizCallback"]


class BIDVizCallback(TrainerCallback):  # type: ignore[misc]
    """Attach a BIDViz bridge to a `transformers.Trainer`.

    Args:
        logdir: the run directory; by default the directory of the Trainer's TensorBoard writer (written through
            it), or `<output_dir>/bidviz` when it does not report to TensorBoard.
        trainer: the `Trainer` this callback is added to, for its TensorBoard writer (found at `on_train_begin`
            among `trainer.callback_handler.callbacks`).
        writer: a writer to write through instead (see `Bridge(writer=)`), e.g. the `tb_writer` you gave the
            Trainer's `TensorBoardCallback`; the run directory is then `logdir`, or the writer's own.
        namespace: extra names for metric code and `eval`.
        hparams: your own tunable values, `{"dropout": 0.1}` or `{"dropout": {"value": 0.1, "on_change": f}}`.
        **bridge_kwargs: passed to `Bridge` (`secret`, `resume`, `poll_interval`, `hook_budget`, `flush_secs`,
            `dist_timeout`).

    Metric code and `eval` see `model`, `trainer_state` (the `TrainerState`; `state` too in `eval`, but in metric
    code `state` is the metric's own dict), `logs` (the latest logged dict), `args`, `control`, `optimizer`,
    `scheduler`, `train_dataloader`, `rank` (`args.process_index`) and your namespace.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str] | None = None,
        *,
        trainer: Any = None,
        writer: Any = None,
        namespace: Mapping[str, Any] | None = None,
        hparams: HParamSpecs | None = None,
        **bridge_kwargs: Any,
    ) -> None:
        self.logdir = logdir
        self.trainer = trainer
        self.writer = writer
        self.namespace = dict(namespace or {})
        self.hparam_specs = hparams
        self.bridge_kwargs = bridge_kwargs
        self.bridge: Bridge | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the bridge (on every rank of a torch.distributed job); bind the optimizer and its LR scheduler."""
        if self.bridge is not None:
            return
        _, world = job_rank()
        if world == 1 and not state.is_world_process_zero:
            return  # several processes, but not joined by torch.distributed: commands could not reach this one
        run_dir, writer = run_dir_on_every_rank(lambda: self._where(args))
        ns = {
            "rank": args.process_index,
            "model": kwargs.get("model"),
            "state": state,  # in `eval`; metric code has its own `state` dict, so it reads `trainer_state`
            "trainer_state": state,
            "args": args,
            "control": control,
            "logs": {},
            "train_dataloader": kwargs.get("train_dataloader"),
            **self.namespace,
        }
        self.bridge = bridge = Bridge(run_dir, writer=writer, namespace=ns, **self.bridge_kwargs)
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            bridge.bind_optimizer(optimizer, _unwrap_scheduler(kwargs.get("lr_scheduler")))
        register_hparams(bridge, self.hparam_specs)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the latest logs for metric code."""
        if self.bridge is not None and logs is not None:
            self.bridge.namespace["logs"] = logs

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """A step boundary (after the optimizer and scheduler steps): apply commands, run metrics; a `stop` sets
        `control.should_training_stop`."""
        bridge = self.bridge
        if bridge is None:
            return
        bridge.step(state.global_step, control=control)
        if bridge.should_stop:
            control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Close the bridge (the TensorBoard callback, called before us, has flushed and closed the writer)."""
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

    def _where(self, args: TrainingArguments) -> tuple[str, Any]:
        """The run directory and the writer to write through (None: the bridge makes its own)."""
        if self.writer is not None:
            run_dir = self.logdir if self.logdir is not None else writer_dir(self.writer)
            if run_dir is None:
                raise ValueError(
                    f"BIDVizCallback(writer=) got a {type(self.writer).__qualname__}, which does not tell its "
                    "directory; pass logdir= too"
                )
            return os.fspath(run_dir), self.writer
        writer = self._trainer_writer()
        tb_dir = writer_dir(writer) if writer is not None else None
        # TrainingArguments makes a missing output_dir "trainer_output"; typed as optional all the same.
        return run_dir_for(self.logdir, writer, tb_dir, os.path.join(args.output_dir or "trainer_output", "bidviz"))

    def _trainer_writer(self) -> Any:
        """The writer of the Trainer's `TensorBoardCallback` (which opened it in its own `on_train_begin`, called
        before ours), or None. Called from `on_train_begin` only: the caller lookup counts the frames from there."""
        from transformers.integrations import TensorBoardCallback

        if self.trainer is not None:
            callbacks = list(self.trainer.callback_handler.callbacks)
        else:
            callbacks = compat.hf_callbacks_of_caller() or []
        tb = next((cb for cb in callbacks if isinstance(cb, TensorBoardCallback)), None)
        return getattr(tb, "tb_writer", None)


def _unwrap_scheduler(scheduler: Any) -> Any:
    """Accelerate's `AcceleratedScheduler` keeps the torch scheduler in `.scheduler`."""
    inner = getattr(scheduler, "scheduler", None)
    return inner if inner is not None and hasattr(inner, "get_last_lr") else scheduler

"""PyTorch Lightning: `trainer = Trainer(callbacks=[BIDVizCallback()])`.

The bridge starts when fitting starts (the optimizers and LR schedulers exist by then), writes through the trainer's
`TensorBoardLogger` when it has one (so its series land in the logger's run, `lightning_logs/version_N`), steps at
each `on_train_batch_end` that ended an optimizer step, with `trainer.global_step` (with `accumulate_grad_batches=4`,
once every 4 batches: metrics run once per optimizer step, `--every N` counts optimizer steps, and commands apply
between optimizer steps, never between the micro-batches of one), and stops the Lightning way:
`trainer.should_stop = True` ends the fit after the current batch, through Lightning's own end-of-training hooks. It
closes at `teardown`, before the logger is finalized.

Under a distributed strategy (`strategy="ddp"`, ...) every process runs a bridge on the same run directory: the
global-zero process's choice, broadcast once (the other processes' loggers are dummies). Rank 0 leads: it alone
reads the mailbox and writes events; every rank applies each command at the same step, so a set `lr` changes every
rank's optimizer and a `stop` ends every rank's fit at the same batch (see `bidviz.bridge.ranks` and
docs/distributed.md). Without torch.distributed (a strategy that uses something else to talk) only the global-zero
process runs one, as commands could not reach the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from bidviz.bridge.core import Bridge

from ._common import HParamSpecs, job_rank, register_hparams, run_dir_for, run_dir_on_every_rank, writer_dir

__all__ = ["BIDVizCallback"]


class BIDVizCallback(Callback):
    """Attach a BIDViz bridge to a Lightning `Trainer`.

    Args:
        logdir: the run directory; by default the `TensorBoardLogger`'s `log_dir` (written through its writer), or
            `<default_root_dir>/bidviz` when the trainer has no TensorBoard logger.
        namespace: extra names for metric code and `eval`.
        hparams: your own tunable values, `{"dropout": 0.1}` or `{"dropout": {"value": 0.1, "max": 0.9,
            "on_change": f}}`; read them with `callback.bridge.hparams["dropout"]`.
        **bridge_kwargs: passed to `Bridge` (`secret`, `resume`, `poll_interval`, `hook_budget`, `flush_secs`,
            `dist_timeout`).

    Metric code sees `trainer`, `pl_module` (also as `model`), `outputs`, `loss` (when the step returned one),
    `batch`, `batch_idx`, `optimizer`, `scheduler`, `rank` (`trainer.global_rank`) and your namespace. The
    optimizers' values are bound as `lr`, `momentum`, `betas`, ...; with several optimizers, the second one's are
    `opt1/lr`, ... A set `lr` survives the optimizer's LR scheduler.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str] | None = None,
        *,
        namespace: Mapping[str, Any] | None = None,
        hparams: HParamSpecs | None = None,
        **bridge_kwargs: Any,
    ) -> None:
        self.logdir = logdir
        self.namespace = dict(namespace or {})
        self.hparam_specs = hparams
        self.bridge_kwargs = bridge_kwargs
        self.bridge: Bridge | None = None
        self._before = -1  # trainer.global_step when this batch started

    # -- Lightning hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the bridge (on every rank of a torch.distributed job) and bind the optimizers (configured by now)
        and their LR schedulers."""
        if self.bridge is not None:
            return
        _, world = job_rank()
        if world == 1 and not trainer.is_global_zero:
            return  # several processes, but not joined by torch.distributed: commands could not reach this one
        run_dir, writer = run_dir_on_every_rank(lambda: self._where(trainer))
        ns = {"trainer": trainer, "pl_module": pl_module, "model": pl_module, "rank": trainer.global_rank}
        ns.update(self.namespace)
        self.bridge = bridge = Bridge(run_dir, writer=writer, namespace=ns, **self.bridge_kwargs)
        schedulers: dict[int, Any] = {}
        for config in trainer.lr_scheduler_configs:
            opt = getattr(config.scheduler, "optimizer", None)
            schedulers.setdefault(id(opt), config.scheduler)
        for i, optimizer in enumerate(trainer.optimizers):
            bridge.bind_optimizer(optimizer, schedulers.get(id(optimizer)), prefix=f"opt{i}/" if i else "")
        register_hparams(bridge, self.hparam_specs)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Note the step count, to see whether this batch ends an optimizer step."""
        self._before = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A step boundary when this batch ended an optimizer step (`global_step` moved; not after the other
        micro-batches of gradient accumulation): apply commands, run metrics; a `stop` sets `trainer.should_stop`."""
        bridge = self.bridge
        if bridge is None or trainer.global_step == self._before:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        bridge.step(trainer.global_step, outputs=outputs, loss=loss, batch=batch, batch_idx=batch_idx)
        if bridge.should_stop:
            trainer.should_stop = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close the bridge: commands still queued get their answer."""
        self._close()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Close the bridge after fitting, before the logger is finalized."""
        if stage == "fit":
            self._close()

    # -- helpers --------------------------------------------------------------------------------------

    def _where(self, trainer: Trainer) -> tuple[str, Any]:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        writer = tb.experiment if tb is not None else None
        tb_dir = (writer_dir(writer) or tb.log_dir) if tb is not None else None
        return run_dir_for(self.logdir, writer, tb_dir, os.path.join(trainer.default_root_dir, "bidviz"))

    def _close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

"""A Lightning DDP job on the CPU (two processes, gloo) with BIDVizCallback, for the distributed integration tests:

    python ddp_lightning_trainer.py LOGDIR [--delay SECONDS] [--max-steps N]

Lightning launches the second process itself (the ddp strategy's subprocess launcher runs this script again with
LOCAL_RANK=1). The bridge writes through the TensorBoardLogger's writer into LOGDIR/run. Each rank appends one JSON
line a step to LOGDIR/rank<K>.jsonl (the global step, its optimizer's lr, trainer.should_stop) after the bridge has
stepped, and {"exit": 0, "step": S} when `fit` returns. Rank 0 then waits for the processes Lightning launched and
exits with the first nonzero exit status among them, so its own status speaks for the whole job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bidviz.integrations.lightning import BIDVizCallback


class Net(LightningModule):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.delay = delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.delay > 0:
            time.sleep(self.delay)
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class RankLog(Callback):
    """One line a step, after BIDVizCallback (callbacks run in the order given)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.file: Any = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.file = open(self.logdir / f"rank{trainer.global_rank}.jsonl", "a", buffering=1)  # noqa: SIM115
        self.file.write(json.dumps({"pid": os.getpid()}) + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.file.write(json.dumps({"step": trainer.global_step, "lr": lr, "stop": trainer.should_stop}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("logdir", type=Path)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=100_000)
    a = p.parse_args()
    warnings.filterwarnings("ignore", ".*(does not have many workers|LeafSpec|litlogger|GPU available).*")
    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=True)
    log = RankLog(a.logdir)
    trainer = Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=a.max_steps,
        max_epochs=-1,
        logger=TensorBoardLogger(a.logdir, name="", version="run", default_hp_metric=False),
        callbacks=[BIDVizCallback(dist_timeout=60), log],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(Net(a.delay), data)
    log.file.write(json.dumps({"exit": 0, "step": trainer.global_step}) + "\n")
    log.file.close()
    status = 0
    if trainer.is_global_zero:  # the processes Lightning launched: their exit statuses are ours to report
        for proc in getattr(trainer.strategy.launcher, "procs", []):
            code = proc.wait(60)
            print(f"launched process {proc.pid} exited with {code}", flush=True)
            status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())

"""PyTorch Lightning on scikit-learn's handwritten digits, steerable live with BIDViz.

    python examples/lightning_digits.py --logdir runs        # trains runs/lightning until stopped (or --steps)
    bidviz set runs/lightning lr=0.01                          # from another terminal
    python examples/lightning_digits.py --devices 2          # DDP on two CPU processes, a bridge on each

The bridge writes through Lightning's TensorBoardLogger, so its series and Lightning's own (`train_loss`) share
one run. Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bidviz.integrations.lightning import BIDVizCallback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="lightning", help="run name inside the log directory (default: lightning)")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps to train; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (accumulate_grad_batches)")
    p.add_argument("--devices", type=int, default=1, help="CPU processes; more than 1 trains with DDP (gloo)")
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


class DigitsNet(LightningModule):
    def __init__(self, lr: float, delay: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
        self.lr = lr
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        if self.delay > 0:
            time.sleep(self.delay)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        # Closed-form decay (recomputed from base_lrs at every step): a set lr survives it because BIDViz rescales.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.999**s)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def set_dropout(model: DigitsNet) -> Any:
    def apply(p: float) -> None:
        model.net[2].p = p

    return apply


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*(LeafSpec|litlogger|GPU available).*")
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    loader = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True)
    model = DigitsNet(args.lr, args.delay)
    run_dir = os.path.join(args.logdir, args.run)

    callback = BIDVizCallback(
        namespace={"x_val": x[1500:], "y_val": y[1500:]},
        hparams={"dropout": {"value": 0.1, "min": 0.0, "max": 0.9, "on_change": set_dropout(model)}},
    )
    trainer = Trainer(
        max_steps=args.steps if args.steps > 0 else -1,
        max_epochs=-1,
        logger=TensorBoardLogger(args.logdir, name="", version=args.run, default_hp_metric=False),
        callbacks=[callback],
        default_root_dir=args.logdir,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        accumulate_grad_batches=args.accumulate,
        accelerator="cpu",
        devices=args.devices,
        # With more than one device Lightning runs this script again for each other rank; each makes a bridge.
        strategy="ddp" if args.devices > 1 else "auto",
    )
    if not args.quiet and trainer.is_global_zero:
        print_help(run_dir)
    trainer.fit(model, loader)
    stopped = " (stopped by command)" if trainer.should_stop else ""
    rank = f"rank {trainer.global_rank}: " if trainer.world_size > 1 else ""
    print(f"{rank}training ended at step {trainer.global_step}{stopped}; trainer status: {trainer.state.status.value}")
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge will be live on {run_dir} once fitting starts. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 momentum=0.5 dropout=0.3
  bidviz metric add {run} weight_norm "pl_module.net[0].weight.norm()"
  bidviz metric add {run} val_acc "(pl_module(x_val).argmax(1) == y_val).float().mean()" --every 20
  bidviz metric add {run} loss_x100 "outputs['loss'] * 100"
  bidviz eval {run} "trainer.global_step, scheduler.get_last_lr()"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}                       # sets trainer.should_stop: Lightning ends the fit its own way
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

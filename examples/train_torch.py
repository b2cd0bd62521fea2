"""A small network learning scikit-learn's handwritten digits, steerable live with BIDViz.

    python examples/train_torch.py --logdir runs            # trains runs/digits until stopped
    bidviz set runs/digits lr=0.01                           # from another terminal

Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from bidviz import Bridge


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="digits", help="run name inside the log directory (default: digits)")
    p.add_argument("--steps", type=int, default=0, help="steps to train; 0 trains until stopped (default)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scheduler", action="store_true", help="decay lr with a StepLR (a set lr survives it)")
    p.add_argument("--fresh", action="store_true", help="ignore the run's journal (do not resume tuned values)")
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


class Net(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    n_train = 1500
    x_train, y_train, x_val, y_val = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    model = Net(dropout=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=500, gamma=0.5) if args.scheduler else None
    loss_fn = nn.CrossEntropyLoss()
    run_dir = os.path.join(args.logdir, args.run)

    def set_dropout(p: float) -> None:
        model.drop.p = p

    with Bridge(run_dir, namespace={"model": model, "x_val": x_val, "y_val": y_val}, resume=not args.fresh) as bridge:
        bridge.bind_optimizer(optimizer, scheduler)
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9, on_change=set_dropout)
        bridge.hparam("batch_size", args.batch_size, min=1, max=n_train)
        if not args.quiet:
            print_help(run_dir)
        step = 0
        gen = torch.Generator().manual_seed(1)
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            idx = torch.randint(0, n_train, (int(bridge.hparams["batch_size"]),), generator=gen)
            model.train()
            outputs = model(x_train[idx])
            loss = loss_fn(outputs, y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if step % 50 == 0:
                model.eval()
                with torch.no_grad():
                    acc = (model(x_val).argmax(1) == y_val).float().mean().item()
                bridge.writer.add_scalar("val/accuracy", acc, step)
                model.train()
            bridge.writer.add_scalar("train/loss", loss.item(), step)
            bridge.step(step, loss=loss, outputs=outputs, batch=(x_train[idx], y_train[idx]))
            step += 1
            if args.delay > 0:
                time.sleep(args.delay)
        print(f"training ended at step {step}" + (" (stopped by command)" if bridge.should_stop else ""), flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge is live on {run_dir}. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 momentum=0.5 dropout=0.3
  bidviz metric add {run} weight_norm "model.fc1.weight.norm()"
  bidviz metric add {run} val_acc "(model(x_val).argmax(1) == y_val).float().mean()" --every 50
  bidviz metric add {run} fc1_weights "model.fc1.weight" --kind histogram --every 20
  bidviz diagnostics {run}
  bidviz metric ls {run}
  bidviz eval {run} "[g['lr'] for g in optimizer.param_groups]"
  bidviz eval {run} "1 / 0"
  bidviz pause {run};  bidviz resume {run}
  bidviz journal {run}
  bidviz stop {run}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""A plain Hugging Face Accelerate loop (no Trainer) on scikit-learn's handwritten digits, steerable live with BIDViz:
`accelerator.prepare` wraps the model, optimizer, data loader and LR scheduler, `accelerator.backward` computes the
gradients, `accelerator.accumulate` accumulates them; the bridge binds the prepared optimizer and scheduler.

    python examples/accelerate_loop.py --logdir runs      # trains runs/accelerate (or --steps 0: until stopped)
    bidviz set runs/accelerate lr=0.01                    # from another terminal: the decay goes on from 0.01

The scheduler is a LambdaLR (lr = base * 0.999**step), which recomputes lr from its base at every step: BIDViz rescales
the base inside Accelerate's AcceleratedScheduler, so a set lr survives. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from accelerate import Accelerator
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bidviz import Bridge

DECAY = 0.999  # lr = base * DECAY**optimizer_step
N_TRAIN = 1500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="accelerate", help="run name inside the log directory (default: accelerate)")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps to train; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--accumulation", type=int, default=1, help="Accelerate's gradient_accumulation_steps")
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_val, y_val = x[N_TRAIN:], y[N_TRAIN:]
    loader = DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=32, shuffle=True)

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accumulation)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: DECAY**s)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    loss_fn = nn.CrossEntropyLoss()

    run_dir = os.path.join(args.logdir, args.run)
    if not args.quiet:
        print_help(run_dir)
    ns = {"model": model, "accelerator": accelerator, "x_val": x_val, "y_val": y_val}
    step = 0  # optimizer steps: the bridge steps once per step, never between accumulated micro-batches
    with Bridge(run_dir, namespace=ns) as bridge:
        bridge.bind_optimizer(optimizer, scheduler)  # Accelerate's wrappers, as prepare() returned them
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            for xb, yb in loader:
                with accelerator.accumulate(model):
                    loss = loss_fn(model(xb), yb)
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bridge.writer.add_scalar("train/loss", loss.item(), step)
                bridge.step(step, loss=loss, batch=(xb, yb))
                if args.delay > 0:
                    time.sleep(args.delay)
                if bridge.should_stop or step == args.steps:
                    break
    stopped = " (stopped by command)" if bridge.should_stop else ""
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    print(f"training ended at step {step}{stopped}; validation accuracy {accuracy:.3f}", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge live on {run_dir} once training starts. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 momentum=0.5
  bidviz metric add {run} lr_now "scheduler.get_last_lr()[0]"
  bidviz metric add {run} val_acc "(model(x_val).argmax(1) == y_val).float().mean()" --every 50
  bidviz eval {run} "type(optimizer).__name__, type(scheduler).__name__, optimizer.param_groups[0]['lr']"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

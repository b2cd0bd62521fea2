"""A small network learning scikit-learn's handwritten digits, steerable live with BIDViz.

    python examples/train_torch.py --logdir runs            # a new run each start: runs/digits-1, digits-2, ...
    bidviz set runs/digits-1 lr=0.01                         # from another terminal
    python examples/train_torch.py --resume runs/digits-1   # continue that run: its tuned values, its step count

Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from bidviz import Bridge
from bidviz.channel import find_runs, is_url, mailbox_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", help="name of a new run inside the log directory (default: the next digits-<n>)")
    which.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN (a run directory, or a name inside the log directory): its tuned values and metrics are "
        "replayed from its journal, and its steps go on from its last one",
    )
    p.add_argument("--steps", type=int, default=0, help="steps to train this time; 0 trains until stopped (default)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scheduler", action="store_true", help="decay lr with a StepLR (a set lr survives it)")
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


def run_dir_of(args: argparse.Namespace) -> str:
    """The run to train: the one to resume, a new one named --run, or the next free `digits-<n>`. The log directory
    may be a URL (`s3://bucket/runs`)."""
    if args.resume:
        run_dir = args.resume if _is_run(args.resume) else _join(args.logdir, args.resume)
        if not _is_run(run_dir):
            sys.exit(
                f"--resume {args.resume}: {run_dir} is not a run (no .bidviz/ there); see `bidviz status {args.logdir}`"
            )
        return run_dir
    if args.run:
        run_dir = _join(args.logdir, args.run)
        if _is_run(run_dir) or os.path.exists(run_dir):
            sys.exit(f"{run_dir} exists: give --resume {run_dir} to continue it, or another --run name")
        return run_dir
    taken = [int(m.group(1)) for name in _listdir(args.logdir) if (m := re.fullmatch(r"digits-(\d+)", name))]
    return _join(args.logdir, f"digits-{max(taken, default=0) + 1}")


def _is_run(run_dir: str) -> bool:
    return mailbox_for(run_dir).exists()


def _join(logdir: str, name: str) -> str:
    return f"{logdir.rstrip('/')}/{name}" if is_url(logdir) else os.path.join(logdir, name)


def _listdir(path: str) -> list[str]:
    if is_url(path):
        return [name for name, _ in find_runs(path, event_files=True)]
    try:
        return os.listdir(path)
    except OSError:
        return []


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
    run_dir = run_dir_of(args)

    def set_dropout(p: float) -> None:
        model.drop.p = p

    defaults = {"lr": args.lr, "momentum": 0.9, "dropout": 0.1, "batch_size": args.batch_size}
    with Bridge(run_dir, namespace={"model": model, "x_val": x_val, "y_val": y_val}) as bridge:
        bridge.bind_optimizer(optimizer, scheduler)
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9, on_change=set_dropout)
        bridge.hparam("batch_size", args.batch_size, min=1, max=n_train)
        step = 0
        if bridge.resumed_step is not None:  # go on from the run's last step, so its curves do not restart
            step = bridge.resumed_step + 1
            tuned = [f"{n}={bridge.hparams[n]!r}" for n, v in defaults.items() if bridge.hparams.get(n, v) != v]
            replayed = f"replayed from its journal: {', '.join(tuned)}" if tuned else "no tuned values to replay"
            print(f"resuming {run_dir} at step {step}; {replayed}", flush=True)
        if not args.quiet:
            print_help(run_dir)
        gen = torch.Generator().manual_seed(1)
        end = step + args.steps if args.steps > 0 else None
        while not bridge.should_stop and (end is None or step < end):
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

Start another run beside it: python examples/train_torch.py --logdir {shlex.quote(os.path.dirname(run_dir) or ".")}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

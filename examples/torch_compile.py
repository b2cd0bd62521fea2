"""A `torch.compile`d network learning scikit-learn's handwritten digits, steerable live with BIDViz.

    python examples/torch_compile.py --logdir runs       # trains runs/compiled (or --steps 0: until stopped)
    bidviz set runs/compiled lr=0.01                     # from another terminal: no recompilation

The model is compiled (forward and backward); the optimizer and its LambdaLR scheduler step eagerly, so `lr` is a
plain number in the param group and a change never reaches a compiled graph. Metric code that reads weights
(`model.fc1.weight.norm()`) runs eagerly too. Calling the compiled model on something new (another batch size, under
`torch.no_grad()`, after `model.eval()`) compiles it once for that case; `net` is the same module uncompiled, for
metrics and evals that should not. `bidviz eval RUN "compiles()"` counts the graphs compiled so far.
Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
import torch._dynamo.utils
from sklearn.datasets import load_digits
from torch import nn

from bidviz import Bridge

DECAY = 0.999  # lr = base * DECAY**step
N_TRAIN = 1500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="compiled", help="run name inside the log directory (default: compiled)")
    p.add_argument("--steps", type=int, default=600, help="steps to train; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--backend",
        default="inductor",
        help="torch.compile backend (default inductor, which needs a C compiler on the CPU; aot_eager does not)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def compiles() -> int:
    """Graphs torch.compile has compiled in this process (a recompilation adds one)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, y_train, x_val, y_val = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]

    net = Net()
    model = torch.compile(net, backend=args.backend)  # shares its parameters with net
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: DECAY**s)
    loss_fn = nn.CrossEntropyLoss()

    run_dir = os.path.join(args.logdir, args.run)
    if not args.quiet:
        print_help(run_dir)
    ns = {"model": model, "net": net, "x_val": x_val, "y_val": y_val, "compiles": compiles}
    gen = torch.Generator().manual_seed(1)
    step = 0
    with Bridge(run_dir, namespace=ns) as bridge:
        bridge.bind_optimizer(optimizer, scheduler)
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            idx = torch.randint(0, N_TRAIN, (32,), generator=gen)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bridge.writer.add_scalar("train/loss", loss.item(), step)
            bridge.step(step, loss=loss)
            if args.delay > 0:
                time.sleep(args.delay)
    stopped = " (stopped by command)" if bridge.should_stop else ""
    with torch.no_grad():
        accuracy = (net(x_val).argmax(1) == y_val).float().mean().item()
    print(f"training ended at step {step}{stopped}; graphs compiled: {compiles()}; accuracy {accuracy:.3f}", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge live on {run_dir} once the first step has compiled. Try, from another terminal:

  bidviz set {run} lr=0.01 momentum=0.5                          # no recompilation
  bidviz metric add {run} weight_norm "model.fc1.weight.norm()"  # reads weights eagerly: no recompilation
  bidviz metric add {run} val_acc "(net(x_val).argmax(1) == y_val).float().mean()" --every 50   # eager net
  bidviz eval {run} "compiles()"                                 # graphs compiled so far
  bidviz eval {run} "(model(x_val).argmax(1) == y_val).float().mean()"   # compiles once for this batch size
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

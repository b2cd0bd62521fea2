"""Data-parallel training on scikit-learn's handwritten digits (DistributedDataParallel, gloo, CPU), steerable live
with BIDViz on every rank:

    torchrun --nproc-per-node 2 examples/train_ddp.py --logdir runs     # trains runs/ddp until stopped
    bidviz set runs/ddp lr=0.01                                         # from another terminal: every rank, same step

Every rank makes a `Bridge` on the same run directory. Rank 0 leads: it alone reads the mailbox, keeps the journal
and writes the events; it hands each command to the other ranks at the next sync point, so every rank's optimizer
gets the new `lr` at the same step, a `pause` holds every rank at the same step and a `stop` ends every rank's loop
together (see docs/distributed.md). Started without torchrun, it trains as a world of one. Nothing is downloaded:
the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import socket
import sys
import time

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bidviz import Bridge


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="ddp", help="run name inside the log directory (default: ddp)")
    p.add_argument("--steps", type=int, default=0, help="steps to train; 0 trains until stopped (default)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32, help="examples per rank and step")
    p.add_argument("--fresh", action="store_true", help="ignore the run's journal (do not resume tuned values)")
    p.add_argument("--dist-timeout", type=float, default=300.0, help="seconds a rank waits for the others")
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


def join(timeout: float) -> tuple[int, int]:
    """Join torchrun's job (its env:// variables), or make a world of one when started without torchrun."""
    if "RANK" in os.environ:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world = join(args.dist_timeout)
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    n_train = 1500
    # Each rank draws its batches from its own shard of the training set.
    shard = torch.arange(rank, n_train, world)
    x_train, y_train, x_val, y_val = x[shard], y[shard], x[n_train:], y[n_train:]

    net = Net(dropout=0.1)
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    run_dir = os.path.join(args.logdir, args.run)

    def set_dropout(p: float) -> None:  # runs on every rank, at the same step
        net.drop.p = p

    namespace = {"model": model, "net": net, "rank": rank, "world": world, "x_val": x_val, "y_val": y_val}
    # On every rank, the same run directory; rank 0 writes events, the others get a writer that writes nothing.
    with Bridge(run_dir, namespace=namespace, resume=not args.fresh, dist_timeout=args.dist_timeout) as bridge:
        bridge.bind_optimizer(optimizer)
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9, on_change=set_dropout)
        bridge.hparam("batch_size", args.batch_size, min=1, max=len(shard))
        if rank == 0 and not args.quiet:
            print_help(run_dir, world)
        step = 0
        gen = torch.Generator().manual_seed(1 + rank)
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            idx = torch.randint(0, len(shard), (int(bridge.hparams["batch_size"]),), generator=gen)
            model.train()
            outputs = model(x_train[idx])
            loss = loss_fn(outputs, y_train[idx])
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients of every rank here
            optimizer.step()
            if rank == 0 and step % 50 == 0:  # rank 0's replica (the same weights everywhere), outside DDP
                net.eval()
                with torch.no_grad():
                    acc = (net(x_val).argmax(1) == y_val).float().mean().item()
                bridge.writer.add_scalar("val/accuracy", acc, step)
            bridge.writer.add_scalar("train/loss_rank0", loss.item(), step)  # writes nothing on other ranks
            # Every rank calls step() once a step: sync points are counted in calls, so the counts must agree.
            bridge.step(step, loss=loss, outputs=outputs, batch=(x_train[idx], y_train[idx]))
            step += 1
            if args.delay > 0:
                time.sleep(args.delay)
        ended = " (stopped by command)" if bridge.should_stop else ""
        print(f"rank {rank} of {world}: training ended at step {step}{ended}", flush=True)
    dist.destroy_process_group()
    return 0


def print_help(run_dir: str, world: int) -> None:
    run = shlex.quote(run_dir)
    metric_set = '{"bidviz_metrics": 1, "metrics": [{"name": "loss_mean", "code": "loss.item()", "reduce": "mean"}]}'
    send = (
        f"from bidviz import protocol; from bidviz.channel import Mailbox; m = Mailbox({run_dir!r}); "
        "print(m.wait_response(m.send(protocol.make_command('eval', {'code': 'rank, loss.item()', 'ranks': 'all'})),"
        " 30)['result'])"
    )
    print(
        f"""BIDViz bridges are live on {run_dir}, on all {world} ranks. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 dropout=0.3 batch_size=64        # every rank, at the same step
  bidviz metric add {run} weight_norm "net.fc1.weight.norm()"  # rank 0's value (the weights agree)
  echo '{metric_set}' | bidviz metric import {run} -   # every rank's loss, averaged (reduce: mean, max, all...)
  bidviz eval {run} "rank, [g['lr'] for g in optimizer.param_groups]"   # rank 0 answers
  python -c "{send}"   # every rank answers
  bidviz pause {run};  bidviz resume {run}               # every rank waits at the same step
  bidviz stop {run}                                      # every rank leaves its loop at the same step
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

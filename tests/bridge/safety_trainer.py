"""A regression loop for the safety-net tests (guard, snapshots, rewind, rules), against the documented API only:

    python safety_trainer.py RUN_DIR [--lr LR] [--width W] [--no-guard] [--snapshot-bytes N] [--delay S]

Writes its loss as `train/loss` every step; `spike` (a hyperparameter) scales the targets, so a test can make the
gradients jump. Prints READY when the bridge is up and DONE <step> when the loop ends.
"""

import argparse
import sys
import time

import torch

from bidviz import Bridge

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--width", type=int, default=16)
p.add_argument("--no-guard", action="store_true")
p.add_argument("--snapshot-bytes", type=int, default=None)
p.add_argument("--delay", type=float, default=0.005)
p.add_argument("--budget", type=float, default=10.0)
a = p.parse_args()

torch.manual_seed(0)
x = torch.randn(256, 8)
y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
model = torch.nn.Sequential(torch.nn.Linear(8, a.width), torch.nn.ReLU(), torch.nn.Linear(a.width, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
extra = {} if a.snapshot_bytes is None else {"snapshot_bytes": a.snapshot_bytes}
spike = [1.0]

with Bridge(a.run_dir, namespace={"model": model}, guard=not a.no_guard, hook_budget=a.budget, **extra) as bridge:
    bridge.bind_optimizer(optimizer)
    bridge.hparam("spike", 1.0, min=0.0, on_change=lambda v: spike.__setitem__(0, v))
    print("READY", flush=True)
    step = 0
    while not bridge.should_stop:
        loss = torch.nn.functional.mse_loss(model(x), y * spike[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bridge.writer.add_scalar("train/loss", loss.item(), step)
        bridge.step(step, loss=loss)
        step += 1
        time.sleep(a.delay)
    print("DONE", step, flush=True)
sys.exit(0)

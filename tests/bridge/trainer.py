"""A training loop for the tests, written against the documented Bridge API only. Run as a subprocess:

    python trainer.py RUN_DIR [--steps N] [--delay S] [--budget S] [--poll S] [--fresh] [--scheduler]

Prints READY when the bridge is up and DONE <step> when the loop ends.
"""

import argparse
import os
import sys
import time

import torch

from bidviz import Bridge

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--steps", type=int, default=0)
p.add_argument("--delay", type=float, default=0.01)
p.add_argument("--budget", type=float, default=10.0)
p.add_argument("--poll", type=float, default=None)
p.add_argument("--fresh", action="store_true")
p.add_argument("--scheduler", action="store_true")
a = p.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // 100)) if a.scheduler else None
x, y = torch.randn(64, 4), torch.randn(64, 1)
seen_dropout = []

with Bridge(
    a.run_dir,
    namespace={"model": model, "os": os, "time": time},
    hook_budget=a.budget,
    poll_interval=a.poll,
    resume=not a.fresh,
) as bridge:
    bridge.bind_optimizer(optimizer, scheduler)
    bridge.hparam("dropout", 0.1, min=0.0, max=0.9, on_change=seen_dropout.append)
    bridge.hparam("mode", "fast", choices=["fast", "slow"])
    bridge.hparam("slow_setter", 0, on_change=lambda v: time.sleep(float(os.environ.get("SLOW_SETTER", "0"))))
    print("READY", flush=True)
    step = 0
    while not bridge.should_stop and (a.steps <= 0 or step < a.steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        bridge.step(step, loss=loss, model=model)
        step += 1
        time.sleep(a.delay)
    print("DONE", step, flush=True)
sys.exit(0)

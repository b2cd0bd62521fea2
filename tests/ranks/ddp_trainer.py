"""One rank of a small data-parallel job for the ranks tests, written against the documented Bridge API only:

    python ddp_trainer.py RUN_DIR --rank K --world N --port P [--steps S] [--delay D] [--no-ddp] [--timeout T]

Each rank trains a DDP-wrapped model (gloo, CPU) at its own pace (rank K sleeps D * (1 + K) a step), makes a
`Bridge` on the same run directory, and appends one JSON line a step to RUN_DIR/rank<K>.jsonl: the step, the
optimizer's lr, and whether the bridge is paused. Rank 0 prints READY once its bridge is up; every rank prints
DONE <step> when its loop ends.
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bidviz import Bridge

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--rank", type=int, required=True)
p.add_argument("--world", type=int, required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--steps", type=int, default=0)
p.add_argument("--delay", type=float, default=0.005)
p.add_argument("--no-ddp", action="store_true", help="no gradient all-reduce: the bridge's sync is the only one")
p.add_argument("--timeout", type=float, default=60.0)
a = p.parse_args()

dist.init_process_group(
    "gloo",
    init_method=f"tcp://127.0.0.1:{a.port}",
    rank=a.rank,
    world_size=a.world,
    timeout=datetime.timedelta(seconds=max(a.timeout * 4, 30)),
)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
if not a.no_ddp:
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
generator = torch.Generator().manual_seed(a.rank)
x, y = torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)
log = open(Path(a.run_dir) / f"rank{a.rank}.jsonl", "a", buffering=1)
log.write(json.dumps({"pid": os.getpid()}) + "\n")

with Bridge(a.run_dir, namespace={"model": model, "rank": a.rank, "time": time}, dist_timeout=a.timeout) as bridge:
    bridge.bind_optimizer(optimizer)
    if a.rank == 0:
        print("READY", flush=True)
    step = 0
    while not bridge.should_stop and (a.steps <= 0 or step < a.steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bridge.step(step, loss=loss)
        lr = optimizer.param_groups[0]["lr"]
        log.write(json.dumps({"step": step, "lr": lr, "stop": bridge.should_stop}) + "\n")
        step += 1
        time.sleep(a.delay * (1 + a.rank))
    print("DONE", step, flush=True)
dist.destroy_process_group()
sys.exit(0)

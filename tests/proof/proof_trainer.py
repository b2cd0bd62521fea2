"""The proof suite's training process: a real training loop (numpy linear regression by SGD, so it starts in well
under a second, without torch) with a Bridge, written against the documented Bridge API only. Run as:

    python proof_trainer.py RUN_DIR [--delay S] [--budget S] [--fresh] [--metrics N] [--own-sigint]

Prints READY when the bridge is up and DONE <step> when the loop ends. Its namespace holds, for the tests' evals:
`applied` and `seen` (lists the evals append to), `mark(token)` (appends a line to the file named by the
environment variable PROOF_MARKER with one O_APPEND write, so a kill -9 never loses half a line), `np`, `os`,
`time`, `json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from bidviz import Bridge

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--delay", type=float, default=0.005)
p.add_argument("--budget", type=float, default=10.0)
p.add_argument("--fresh", action="store_true")
p.add_argument("--metrics", type=int, default=0, help="start with this many metrics of the soak set")
p.add_argument("--own-sigint", action="store_true", help="install a SIGINT handler of its own (that only notes it)")
a = p.parse_args()
if a.own_sigint:
    signal.signal(signal.SIGINT, lambda signum, frame: None)

MARKER = os.environ.get("PROOF_MARKER", "")


def mark(token: str) -> None:
    fd = os.open(MARKER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)


SOAK_METRICS = {
    "loss": "loss",
    "loss2": "loss * 2",
    "wnorm": "float(np.linalg.norm(w))",
    "parts": "{'loss': loss, 'step': step}",
    "hist": "w",
    "lr_now": "hparams['lr']",
    "body": "total = 0.0\nfor v in w:\n    total += abs(float(v))\nreturn total",
    "text": "f'step {step}'",
    "image": "np.outer(w, w)",
    "mod": "step % 7",
}

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8))
y = x @ rng.normal(size=8) + 0.1 * rng.normal(size=256)
w = np.zeros(8)
namespace = {"applied": [], "seen": [], "mark": mark, "os": os, "time": time, "json": json, "w": w}

with Bridge(a.run_dir, namespace=namespace, hook_budget=a.budget, resume=not a.fresh) as bridge:
    bridge.hparam("lr", 0.01, min=0.0, max=1.0)
    bridge.hparam("mode", "fast", choices=["fast", "slow"])
    bridge.hparam("batch", 32, min=1, max=256)
    for name, code in list(SOAK_METRICS.items())[: a.metrics]:
        kind = "image" if name == "image" else "auto"
        bridge.add_metric(name, code, every=10 if name in ("image", "text", "hist") else 1, kind=kind, replace=True)
    print("READY", flush=True)
    step = 0
    while not bridge.should_stop:
        batch = rng.integers(0, len(x), size=int(bridge.hparams["batch"]))
        err = x[batch] @ w - y[batch]
        loss = float(np.mean(err**2))
        w -= float(bridge.hparams["lr"]) * np.clip(2 * x[batch].T @ err / len(batch), -10, 10)
        np.clip(w, -1e3, 1e3, out=w)
        bridge.step(step, loss=loss, w=w)
        step += 1
        if a.delay:
            time.sleep(a.delay)
    print("DONE", step, flush=True)
sys.exit(0)

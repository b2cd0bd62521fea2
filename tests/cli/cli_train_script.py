"""A tiny training run with a Bridge, driven by the CLI tests. Prints READY once the Bridge is up.

usage: python cli_train_script.py RUN_DIR [--steps N] [--sleep SECONDS]
"""

from __future__ import annotations

import argparse
import time

import torch

from bidviz import Bridge


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--sleep", type=float, default=0.01)
    opts = parser.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    step = -1
    with Bridge(opts.run_dir, namespace={"model": model, "optimizer": optimizer}, poll_interval=None) as bridge:
        bridge.bind_optimizer(optimizer)
        bridge.hparam("dropout", 0.1, min=0.0, max=0.9)
        print("READY", flush=True)
        for step in range(opts.steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            bridge.step(step, loss=loss, model=model)
            if bridge.should_stop:
                break
            time.sleep(opts.sleep)
    print(f"DONE {step}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

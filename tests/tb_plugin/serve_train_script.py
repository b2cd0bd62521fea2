"""A tiny training run for the `bidviz serve` browser tests: a Bridge at its defaults, an SGD optimizer whose lr the
page can set, and series of the script's own beside the bridge's (`train/loss` every step, `train/lr` as the
optimizer holds it, `eval/score` every 5 steps). Prints READY once the Bridge is up, DONE at the end.

usage: python serve_train_script.py RUN_DIR [--steps N] [--sleep SECONDS]
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
    parser.add_argument("--sleep", type=float, default=0.02)
    opts = parser.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    step = -1
    with Bridge(opts.run_dir, namespace={"model": model, "optimizer": optimizer}) as bridge:
        bridge.bind_optimizer(optimizer)
        writer = bridge.writer
        print("READY", flush=True)
        for step in range(opts.steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            if step % 5 == 0:
                writer.add_scalar("eval/score", 1.0 / (1.0 + loss.item()), step)
            bridge.step(step, loss=loss)
            if bridge.should_stop:
                break
            time.sleep(opts.sleep)
    print(f"DONE {step}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

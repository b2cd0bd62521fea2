"""A small training loop with a Bridge on a URL, for the remote tests. Prints READY once the Bridge is up.

usage: python remote_trainer.py URL [--ledger FILE] [--steps N] [--poll SECONDS] [--hook-budget SECONDS]
`ledger` is a local file that the test's eval commands append to: a command applied twice shows there twice.
"""

from __future__ import annotations

import argparse
import sys
import time

from bidviz import Bridge
from bidviz.errors import BridgeBusyError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ledger", default="")
    parser.add_argument("--steps", type=int, default=10_000_000)
    parser.add_argument("--poll", default="0.2", help="seconds, or 'none' (file-system events)")
    parser.add_argument("--hook-budget", type=float, default=10.0)
    opts = parser.parse_args()
    try:
        bridge = Bridge(
            opts.url,
            namespace={"ledger": opts.ledger},
            poll_interval=None if opts.poll == "none" else float(opts.poll),
            hook_budget=opts.hook_budget,
            flush_secs=0.5,
        )
    except BridgeBusyError as e:
        print(f"BUSY {e}", flush=True)
        return 4
    step = -1
    with bridge:
        bridge.hparam("lr", 0.1, min=0.0, max=1.0)
        print("READY", flush=True)
        for step in range(opts.steps):
            bridge.step(step, loss=1.0 / (step + 1))
            if bridge.should_stop:
                break
            time.sleep(0.01)
    print(f"DONE {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

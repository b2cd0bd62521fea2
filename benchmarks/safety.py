"""What the safety net costs: the divergence guard per step, and snapshots (take, restore, memory) by model size.

    python benchmarks/safety.py            # 1M and 10M parameters, about a minute on 2 cores
    python benchmarks/safety.py --full     # also 100M parameters (needs ~3 GB of free memory)

Guard: `Bridge.step(i, loss=x)` with guard=True against guard=False against an empty method of the same signature,
for a Python float, a 0-d CPU tensor and one that requires grad, interleaved rounds, best of each (a loaded machine
adds noise to every figure; the ratios of one run are what to compare). `t.item()` alone is timed in the same
rounds: on CPU the guard reads the loss with it (a read of host memory, no device to wait for).

Snapshots: a stack of 1000x1000 Linear layers with SGD(momentum) state (weights + one buffer each), taken and
restored through `SnapshotStore`, as a `set_hparam` does; memory is the snapshot's bytes and the process's RSS growth.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from bidviz import Bridge
from bidviz.bridge.snapshots import SnapshotStore

IDLE_STEP_NS = 200.0  # the bridge's idle step budget (benchmarks/bridge_overhead.py)
CPU_TENSOR_NS = 1000.0  # the guard's target for a 0-d CPU tensor


class Empty:
    def step(self, step: int | None = None, **context: Any) -> None:
        pass


def _loop(step: Callable[..., None], n: int, x: Any) -> float:
    start = time.perf_counter()
    for i in range(n):
        step(i, loss=x)
    return (time.perf_counter() - start) / n * 1e9


def _item(t: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        t.item()
    return (time.perf_counter() - start) / n * 1e9


def bench_guard(rounds: int, n: int) -> None:
    print("== the guard per step (ns per call, best of", rounds, "interleaved rounds)")
    with tempfile.TemporaryDirectory() as d:
        on, off = Bridge(f"{d}/on"), Bridge(f"{d}/off", guard=False)
        on.step(0)
        off.step(0)
        loss = torch.nn.Linear(2, 1)(torch.randn(3, 2)).sum()
        losses = {"float": 0.5, "cpu tensor": torch.tensor(0.5), "cpu tensor (grad)": loss}
        best: dict[tuple[str, str], float] = {}
        gc.disable()
        try:
            for _ in range(rounds):
                for kind, x in losses.items():
                    for name, fn in (("empty", Empty().step), ("off", off.step), ("on", on.step)):
                        best[kind, name] = min(best.get((kind, name), 1e12), _loop(fn, n, x))
                best["item", "item"] = min(best.get(("item", "item"), 1e12), _item(losses["cpu tensor"], n))
        finally:
            gc.enable()
            on.close()
            off.close()
    for kind in losses:
        e, off_, on_ = best[kind, "empty"], best[kind, "off"], best[kind, "on"]
        print(
            f"  {kind:18s} empty {e:7.1f}   guard off {off_:7.1f}   guard on {on_:7.1f}   guard's own {on_ - off_:7.1f}"
        )
    item = best["item", "item"]
    print(f"  t.item() alone on a 0-d CPU tensor: {item:.1f} ns")
    f_extra = best["float", "on"] - best["float", "empty"]
    t_own = best["cpu tensor", "on"] - best["cpu tensor", "off"]
    print(f"  => float: Bridge.step with the guard above the empty method {f_extra:.1f} ns (budget {IDLE_STEP_NS:g})")
    print(f"  => CPU tensor: the guard's own cost {t_own:.1f} ns (target <= {CPU_TENSOR_NS:g}; item() is {item:.0f})")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_snapshots(sizes: list[int]) -> None:
    print("== snapshots of a model with SGD(momentum) state, on CPU")
    print(f"  {'params':>8s} {'snapshot':>10s} {'take':>9s} {'restore':>9s} {'RSS growth':>11s}")
    for millions in sizes:
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000, bias=False) for _ in range(millions)])
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()  # momentum buffers exist
        targets = {"model": model, "optimizer": opt}
        store = SnapshotStore(targets.copy, max_bytes=1 << 40, max_count=2)
        gc.collect()
        before = _rss()
        t0 = time.perf_counter()
        snap = store.take(0, "bench", None, {})
        t1 = time.perf_counter()
        grown = _rss() - before
        assert snap is not None
        store.restore(snap)
        t2 = time.perf_counter()
        print(
            f"  {millions:>7d}M {snap.nbytes / 2**20:>7.0f} MiB {t1 - t0:>8.3f}s {t2 - t1:>8.3f}s "
            f"{grown / 2**20:>8.0f} MiB"
        )
        del store, snap, model, opt, targets
        gc.collect()
    with tempfile.TemporaryDirectory() as d:
        store = SnapshotStore(lambda: {"model": torch.nn.Linear(1000, 1000)}, max_bytes=1 << 20)
        store.take(0, "too large", None, {})
        print(f"  a model over the budget: {store.note}")
        del d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also the 100M-parameter model")
    parser.add_argument("--rounds", type=int, default=7)
    opts = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    bench_guard(opts.rounds, 200_000)
    bench_snapshots([1, 10, 100] if opts.full else [1, 10])


if __name__ == "__main__":
    main()

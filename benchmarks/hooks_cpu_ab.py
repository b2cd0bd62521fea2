"""Metric hooks against the hand-written cost, in CPU time, an old revision and this one taking turns.

    python benchmarks/hooks_cpu_ab.py [--old PYTHON] [--rounds 5] [--no-pure]

On a shared machine the wall-clock figures of hot_paths.py move by 2-3x from one run to the next (the process waits
for a core). This measures CPU time instead (`time.process_time`: every thread of the process, the bridge's own
included, and none of the time spent waiting), and runs the old revision (`--old`, an interpreter with an earlier
bidviz installed, as for hot_paths.py) and this one in turn, one process a round each, so both see the same load.
Printed: per N (1, 10, 100 metrics), the medians over the rounds of Bridge / by hand with our EventWriter, and of the
bridge's own work per step with a null writer over the hand-written cost of the same values.

"new" runs the fast step as installed: the C one (`bridge/_faststep.c`) when it was compiled. "pure" is the same
revision with BIDVIZ_FASTSTEP=python: faststep.py's step, what runs where no compiler was (--no-pure: leave it out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bridge_overhead import NullWriter  # noqa: E402

SIZES = (1, 10, 100)


def _loss(i: int) -> float:
    return 1.0 / (i + 1)


def sample(values: int = 30_000, repeats: int = 7) -> dict[str, dict[str, float]]:
    """CPU µs per step, best of interleaved repeats: Bridge (EventWriter), Bridge (null writer), by hand."""
    from bidviz.bridge import Bridge
    from bidviz.writers import EventWriter

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bidviz-ab-") as root:
        for n in SIZES:
            steps = values // n
            tags = [(k, f"bidviz/m{k}") for k in range(n)]
            bridge = Bridge(Path(root) / f"b{n}", flush_secs=1.0)
            null = Bridge(Path(root) / f"n{n}", writer=NullWriter())
            writer = EventWriter(Path(root) / f"o{n}", flush_secs=1.0)
            for k in range(n):
                bridge.add_metric(f"m{k}", f"loss * {k}")
                null.add_metric(f"m{k}", f"loss * {k}")

            def bridged(b: Any, start: int, count: int) -> float:
                step = b.step
                t0 = time.process_time()
                for i in range(start, start + count):
                    step(i, loss=_loss(i))
                b.writer.flush()
                return time.process_time() - t0

            def by_hand(w: Any, start: int, count: int, tags: list[tuple[int, str]] = tags) -> float:
                add = w.add_scalar
                t0 = time.process_time()
                for i in range(start, start + count):
                    loss = _loss(i)
                    for k, tag in tags:
                        add(tag, loss * k, i)
                w.flush()
                return time.process_time() - t0

            bridged(bridge, 0, 300)  # warm up
            bridged(null, 0, 300)
            by_hand(writer, 0, 300)
            times: dict[str, list[float]] = {"bridge": [], "null": [], "hand": []}
            start = 1000
            for _ in range(repeats):
                gc.collect()
                times["bridge"].append(bridged(bridge, start, steps))
                times["null"].append(bridged(null, start, steps))
                times["hand"].append(by_hand(writer, start, steps))
                start += steps
            for obj in (bridge, null, writer):
                obj.close()
            out[str(n)] = {name: min(t) / steps * 1e6 for name, t in times.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=None, help="an interpreter with an earlier bidviz installed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pure", action="store_true", help="leave out this revision's pure-Python fast step")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        try:
            from bidviz.bridge.faststep import native
        except ImportError:  # an old revision: no fast step, or no choice of one
            native = None
        print(f"fast step: {'C' if native is not None and native() else 'Python'}", file=sys.stderr)
        print(json.dumps(sample()))
        return 0
    pythons = {"new": (sys.executable, "")}
    if not args.no_pure:
        pythons["pure"] = (sys.executable, "python")
    if args.old:
        pythons["old"] = (args.old, "")
    samples: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in pythons}
    for r in range(args.rounds):
        for name, (python, step) in reversed(pythons.items()):  # old first, then new, each round
            cmd = [python, "-P", os.path.abspath(__file__), "--worker"]
            env = {**os.environ, "BIDVIZ_FASTSTEP": step}
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), check=True, env=env)
            samples[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nCPU µs a step, medians of {args.rounds} rounds    " + "".join(f"{f'N={n}':>12}" for n in SIZES))
    for name, rows in samples.items():
        ratio = [statistics.median(s[str(n)]["bridge"] / s[str(n)]["hand"] for s in rows) for n in SIZES]
        own = [statistics.median(s[str(n)]["null"] / s[str(n)]["hand"] for s in rows) for n in SIZES]
        print(f"  {name}: Bridge / by hand (<= 1.2)       " + "".join(f"{r:>11.2f}x" for r in ratio))
        print(f"  {name}: own work (null) / by hand        " + "".join(f"{r:>11.2f}x" for r in own))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bridge overhead and command latency, with a target and PASS/MISS for each figure.

    python benchmarks/bridge_overhead.py [--quick] [--dir BASE]

1. Idle `Bridge.step()`: ns per call above an empty method with the same signature (tight loops, best of repeats).
2. Ten scalar metrics added with `bridge.add_metric` against the same ten values written by hand per step through
   tensorboardX (and torch.utils.tensorboard, for reference).
3. Command latency: `set_hparam` commands sent from another process while training runs, measured from the
   rename into `inbox/` to the response's `applied_at`, with a 1 kHz loop and with busy loops that starve the
   watcher thread of the GIL.

Everything runs in temporary directories (under --dir when given, to measure on the file system your runs use),
which are removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Targets
IDLE_STEP_NS = 200.0
METRICS_RATIO = 1.2
LATENCY_P50_MS = 5.0
LATENCY_P99_MS = 20.0

N_METRICS = 10
HPARAM = "x"


@dataclass(frozen=True)
class Config:
    quick: bool
    base_dir: str | None
    # 1. idle step
    idle_calls: int
    idle_repeats: int
    # 2. metrics
    metric_steps: int
    metric_repeats: int
    # 3. latency
    commands: int
    spacing: tuple[float, float] = (0.02, 0.05)
    busy_variants: tuple[str, ...] = ("torch", "python")


def make_config(quick: bool, base_dir: str | None) -> Config:
    if quick:
        return Config(
            quick, base_dir, idle_calls=1_000_000, idle_repeats=5, metric_steps=2_000, metric_repeats=3, commands=60
        )
    return Config(
        quick, base_dir, idle_calls=3_000_000, idle_repeats=7, metric_steps=10_000, metric_repeats=5, commands=200
    )


# -- reporting ------------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def line(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
    tail = f"  target {target:<12} {verdict(ok)}" if ok is not None else ""
    print(f"  {label:<58} {value:>16}{tail}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def print_machine() -> None:
    import tensorboardX
    import torch

    print("Machine")
    print(f"  cpus: {os.cpu_count()}  platform: {platform.platform()}")
    print(
        f"  python {platform.python_version()} ({platform.python_implementation()})  torch {torch.__version__}  "
        f"tensorboardX {tensorboardX.__version__}  torch threads {torch.get_num_threads()}"
    )
    print(f"  switch interval {sys.getswitchinterval() * 1000:.1f} ms", flush=True)


@contextmanager
def temp_dir(base: str | None, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- 1. idle step ---------------------------------------------------------------------------------------------------


class EmptyStep:
    def step(self, step: int | None = None, **context: Any) -> None:
        pass


def _loop_kwargs(step: Callable[..., None], n: int, x: float) -> int:
    t0 = time.perf_counter_ns()
    for i in range(n):
        step(i, loss=x)
    return time.perf_counter_ns() - t0


def _loop_plain(step: Callable[..., None], n: int, x: float) -> int:
    t0 = time.perf_counter_ns()
    for i in range(n):
        step(i)
    return time.perf_counter_ns() - t0


def bench_idle(cfg: Config, root: Path) -> bool:
    from bidviz.bridge import Bridge

    print(f"\n1. Idle Bridge.step() ({cfg.idle_calls:,} calls a loop, best of {cfg.idle_repeats})")
    empty = EmptyStep()
    bridge = Bridge(root / "idle")
    try:
        loops = {"kwargs": _loop_kwargs, "plain": _loop_plain}
        best: dict[tuple[str, str], float] = {}
        for loop in loops.values():  # warm up: first step(), the pace estimate of the check schedule
            loop(bridge.step, 200_000, 0.5)
            loop(empty.step, 200_000, 0.5)
        with gc_paused():
            for _ in range(cfg.idle_repeats):
                for name, loop in loops.items():
                    for who, obj in (("bridge", bridge), ("empty", empty)):
                        ns = loop(obj.step, cfg.idle_calls, 0.5) / cfg.idle_calls
                        key = (name, who)
                        best[key] = min(best.get(key, math.inf), ns)
    finally:
        bridge.close()
    kw_extra = best[("kwargs", "bridge")] - best[("kwargs", "empty")]
    plain_extra = best[("plain", "bridge")] - best[("plain", "empty")]
    line("empty method  step(i, loss=x)", f"{best[('kwargs', 'empty')]:.1f} ns")
    line("Bridge.step   step(i, loss=x)", f"{best[('kwargs', 'bridge')]:.1f} ns")
    ok = kw_extra <= IDLE_STEP_NS
    line("=> Bridge.step(i, loss=x) above the empty method", f"{kw_extra:.1f} ns", f"<= {IDLE_STEP_NS:.0f} ns", ok)
    line("empty method  step(i)", f"{best[('plain', 'empty')]:.1f} ns")
    line("Bridge.step   step(i)", f"{best[('plain', 'bridge')]:.1f} ns")
    line(
        "=> Bridge.step(i) above the empty method",
        f"{plain_extra:.1f} ns",
        f"<= {IDLE_STEP_NS:.0f} ns",
        plain_extra <= IDLE_STEP_NS,
    )
    return ok and plain_extra <= IDLE_STEP_NS


class NullWriter:
    """A `bidviz.writers.Writer` that drops everything: isolates the bridge's own per-metric machinery."""

    run_dir: str | None = None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def add_image(self, tag: str, array: Any, step: int, dataformats: str) -> None:
        pass

    def add_hparams_session(self, hparams: Any, metric_tags: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- 2. ten scalar metrics ------------------------------------------------------------------------------------------


def _loss(i: int) -> float:
    return 1.0 / (i + 1)


def _run_bridge(bridge: Any, start: int, n: int) -> float:
    """Seconds for n steps of the bridge with its metrics, plus one flush (as the hand-written loops)."""
    step = bridge.step
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(i, loss=_loss(i))
    bridge.writer.flush()
    return time.perf_counter() - t0


def _run_by_hand(writer: Any, tags: list[str], start: int, n: int) -> float:
    """Seconds for n steps writing the same ten values with writer.add_scalar, plus one flush."""
    add = writer.add_scalar
    indexed = list(enumerate(tags))
    t0 = time.perf_counter()
    for i in range(start, start + n):
        loss = _loss(i)
        for k, tag in indexed:
            add(tag, loss * k, i)
    writer.flush()
    return time.perf_counter() - t0


def _run_bare(start: int, n: int) -> float:
    """The same loop with no logging at all: what every variant pays for the loop and the loss."""
    t0 = time.perf_counter()
    for i in range(start, start + n):
        loss = _loss(i)
        for k in range(N_METRICS):
            _ = loss * k
    return time.perf_counter() - t0


def bench_metrics(cfg: Config, root: Path) -> bool:
    from tensorboardX import SummaryWriter as TbxWriter
    from torch.utils.tensorboard import SummaryWriter as TorchWriter

    from bidviz.bridge import Bridge

    n = cfg.metric_steps
    print(
        f"\n2. {N_METRICS} scalar metrics per step ({n:,} steps a repeat, best of {cfg.metric_repeats}; "
        "each timing includes one flush at the end; all writers flush_secs=1)"
    )
    tags = [f"bidviz/m{k}" for k in range(N_METRICS)]
    bridge = Bridge(root / "bridge", flush_secs=1.0)
    default_bridge = Bridge(root / "default")  # its default flush cadence (0.1 s locally): what users run
    null_bridge = Bridge(root / "null", writer=NullWriter())
    tbx = TbxWriter(str(root / "tbx"), flush_secs=1)
    torch_writer = TorchWriter(str(root / "torch"), flush_secs=1)
    times: dict[str, list[float]] = {"bare": [], "bridge": [], "default": [], "tbx": [], "torch": [], "null": []}
    try:
        for k in range(N_METRICS):
            bridge.add_metric(f"m{k}", f"loss * {k}")
            default_bridge.add_metric(f"m{k}", f"loss * {k}")
            null_bridge.add_metric(f"m{k}", f"loss * {k}")
        # warm up every path (first step, imports, writer threads)
        _run_bridge(bridge, 0, 200)
        _run_bridge(default_bridge, 0, 200)
        _run_bridge(null_bridge, 0, 200)
        _run_by_hand(tbx, tags, 0, 200)
        _run_by_hand(torch_writer, tags, 0, 200)
        start = 200
        for _ in range(cfg.metric_repeats):
            gc.collect()
            times["bare"].append(_run_bare(start, n))
            times["bridge"].append(_run_bridge(bridge, start, n))
            times["default"].append(_run_bridge(default_bridge, start, n))
            times["tbx"].append(_run_by_hand(tbx, tags, start, n))
            times["torch"].append(_run_by_hand(torch_writer, tags, start, n))
            times["null"].append(_run_bridge(null_bridge, start, n))
            start += n
        errors = {name: m["error_count"] for name, m in bridge.state()["metrics"].items() if m["error_count"]}
    finally:
        bridge.close()
        default_bridge.close()
        null_bridge.close()
        tbx.close()
        torch_writer.close()
    if errors:
        print(f"  WARNING: metric errors {errors}")

    def us(name: str) -> tuple[float, float]:
        return min(times[name]) / n * 1e6, statistics.median(times[name]) / n * 1e6

    labels = {
        "bare": "loop alone (loss and 10 products, no writes)",
        "bridge": "Bridge.step(i, loss=loss) with 10 add_metric metrics",
        "default": "the same, Bridge at its default flush_secs",
        "tbx": "by hand: 10 x tensorboardX SummaryWriter.add_scalar",
        "torch": "by hand: 10 x torch.utils.tensorboard add_scalar (ref.)",
    }
    for name, label in labels.items():
        best, median = us(name)
        line(label, f"{best:8.2f} us/step", "")
        print(f"  {'':<58} {'(median ' + f'{median:.2f})':>16}")
    ratio = min(times["bridge"]) / min(times["tbx"])
    ok = ratio <= METRICS_RATIO
    line("=> ratio bridge / hand-written tensorboardX", f"{ratio:.2f}x", f"<= {METRICS_RATIO}x", ok)
    flush = getattr(default_bridge, "flush_secs", None)
    default_ratio = min(times["default"]) / min(times["bridge"])
    line(f"   ratio default (flush_secs={flush}) / flush_secs=1", f"{default_ratio:.2f}x")
    line("   ratio bridge / hand-written torch (reference)", f"{min(times['bridge']) / min(times['torch']):.2f}x")
    own = (min(times["null"]) - min(times["bare"])) / n / N_METRICS * 1e6
    line("   bridge's own machinery per metric value (null writer)", f"{own:.2f} us")
    return ok


# -- 3. command latency ---------------------------------------------------------------------------------------------


def _client(run_dir: str, count: int, spacing: tuple[float, float], seed: int, conn: Connection) -> None:
    """Another process: send `count` set_hparam commands, report (id, time right after the rename) for each."""
    from bidviz import protocol
    from bidviz.channel import Mailbox

    mailbox = Mailbox(run_dir)
    rng = random.Random(seed)
    sent: list[tuple[str, float]] = []
    time.sleep(0.2)  # let the training loop settle
    for k in range(count):
        cmd = protocol.make_command("set_hparam", {"name": HPARAM, "value": float(k) / 1000.0})
        mailbox.send(cmd)
        sent.append((cmd.id, time.time()))  # send() renames into inbox/ last: just after it became visible
        time.sleep(rng.uniform(*spacing))
    conn.send(sent)
    conn.close()


def _torch_work() -> Callable[[], None]:
    import torch

    x = torch.ones(32)

    def work() -> None:  # many short calls that each release and re-take the GIL
        for _ in range(50):
            x.mul_(0.999).add_(0.001)

    return work


def _python_work() -> None:  # pure Python: releases the GIL only when the interpreter forces a switch
    s = 0
    for j in range(3000):
        s += j


@dataclass
class LatencyResult:
    label: str
    latencies_ms: list[float]
    pickup_ms: list[float]
    missing: int
    not_applied: int
    steps: int
    seconds: float
    apply_step_us: list[float]
    step_us: list[float]


def run_latency(cfg: Config, root: Path, variant: str) -> LatencyResult:
    from bidviz.bridge import Bridge

    run_dir = root / f"latency-{variant}"
    bridge = Bridge(run_dir)
    bridge.hparam(HPARAM, 0.0)
    work: Callable[[], None] | None = None
    if variant == "torch":
        work = _torch_work()
    elif variant == "python":
        work = _python_work
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_client, args=(str(run_dir), cfg.commands, cfg.spacing, 1234, child), daemon=True)
    durations: list[float] = []
    sent: list[tuple[str, float]] = []
    perf = time.perf_counter
    period = 0.001
    i = 0
    t_start = perf()
    try:
        proc.start()
        child.close()
        deadline = t_start
        drain_until: float | None = None
        limit = t_start + 60 + cfg.commands * cfg.spacing[1] * 3
        while True:
            t0 = perf()
            bridge.step(i)
            durations.append(perf() - t0)
            i += 1
            if work is not None:
                work()
            else:
                deadline += period
                delay = deadline - perf()
                if delay > 0:
                    time.sleep(delay)
                else:
                    deadline = perf()  # fell behind: do not try to catch up with a burst
            if i % 64 == 0:
                now = perf()
                if drain_until is None and parent.poll():
                    sent = parent.recv()
                    drain_until = now + 0.5  # let the last commands arrive and be applied
                if (drain_until is not None and now >= drain_until) or now >= limit:
                    break
        elapsed = perf() - t_start
    finally:
        bridge.close()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        parent.close()

    latencies, pickups, apply_steps = [], [], []
    missing = not_applied = 0
    for cid, after in sent:
        resp = bridge.mailbox.read_response(cid)
        if resp is None:
            missing += 1
            continue
        if resp["status"] != "applied":
            not_applied += 1
            continue
        latencies.append((resp["applied_at"] - after) * 1000)
        pickups.append((resp["received_at"] - after) * 1000)
        step = resp.get("step")
        if isinstance(step, int) and 0 <= step < len(durations):
            apply_steps.append(durations[step] * 1e6)
    labels = {
        "sleep": "1 kHz loop (step, then sleep to 1 ms)",
        "torch": "busy loop: 100 small torch ops a step, no sleep",
        "python": "busy loop: pure-Python work a step, no sleep",
    }
    return LatencyResult(
        labels[variant],
        latencies,
        pickups,
        missing + (cfg.commands - len(sent)),
        not_applied,
        i,
        elapsed,
        apply_steps,
        [d * 1e6 for d in durations],
    )


def report_latency(r: LatencyResult) -> bool:
    print(
        f"\n  {r.label}: {r.steps:,} steps in {r.seconds:.1f} s ({r.steps / r.seconds:,.0f} steps/s), "
        f"{len(r.latencies_ms)} commands applied, {r.missing} missing, {r.not_applied} not applied"
    )
    if not r.latencies_ms:
        line("no latencies measured", "-", "", False)
        return False
    p50, p99, worst = (percentile(r.latencies_ms, 50), percentile(r.latencies_ms, 99), max(r.latencies_ms))
    ok50, ok99 = p50 <= LATENCY_P50_MS, p99 <= LATENCY_P99_MS
    line("latency inbox rename -> applied_at   p50", f"{p50:.2f} ms", f"<= {LATENCY_P50_MS:.0f} ms", ok50)
    line("                                     p99", f"{p99:.2f} ms", f"<= {LATENCY_P99_MS:.0f} ms", ok99)
    line("                                     max", f"{worst:.2f} ms")
    line(
        "  of which rename -> received_at (pickup)  p50 / p99",
        f"{percentile(r.pickup_ms, 50):.2f} / {percentile(r.pickup_ms, 99):.2f} ms",
    )
    line(
        "Bridge.step() duration, all steps   p50 / p99 / max",
        f"{percentile(r.step_us, 50):.1f} / {percentile(r.step_us, 99):.1f} / {max(r.step_us):.0f} us",
    )
    if r.apply_step_us:
        line(
            "Bridge.step() that applied a command  p50 / max",
            f"{percentile(r.apply_step_us, 50):.0f} / {max(r.apply_step_us):.0f} us",
        )
    ok = ok50 and ok99 and r.missing == 0 and r.not_applied == 0
    return ok


def bench_latency(cfg: Config, root: Path) -> dict[str, bool]:
    lo, hi = cfg.spacing
    print(
        f"\n3. Command latency: {cfg.commands} set_hparam commands from another process, spaced "
        f"{lo * 1000:.0f}-{hi * 1000:.0f} ms (same machine, same clock)"
    )
    results = {}
    for variant in ("sleep", *cfg.busy_variants):
        results[variant] = report_latency(run_latency(cfg, root, variant))
    return results


# -- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations and commands (< 30 s)")
    parser.add_argument("--dir", default=None, help="base directory for the temporary runs (default: system temp)")
    args = parser.parse_args(argv)
    cfg = make_config(args.quick, args.dir)

    t0 = time.perf_counter()
    print_machine()
    with temp_dir(cfg.base_dir, "bidviz-bench-") as root:
        print(f"  runs in {root} ({'quick' if cfg.quick else 'full'} mode)")
        idle = bench_idle(cfg, root)
        metrics = bench_metrics(cfg, root)
        latency = bench_latency(cfg, root)
    required = {
        "1. idle Bridge.step() overhead": idle,
        "2. 10 metrics vs hand-written tensorboardX": metrics,
        "3. command latency, 1 kHz loop": latency["sleep"],
        "3. command latency, busy torch loop": latency["torch"],
    }
    extra = {"3. command latency, busy pure-Python loop": latency["python"]}
    print("\nSummary")
    for name, ok in required.items():
        print(f"  {name:<45} {verdict(ok)}")
    for name, ok in extra.items():
        print(f"  {name:<45} {verdict(ok)}  (extra: not in the exit status)")
    print(f"  total time {time.perf_counter() - t0:.1f} s")
    return 0 if all(required.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

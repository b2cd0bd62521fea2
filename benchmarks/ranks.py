"""What a Bridge costs a distributed job, at 1, 2 and 4 ranks (gloo, CPU, one process a rank on this machine).

    python benchmarks/ranks.py [--quick]

1. Idle cost: each rank runs a loop whose step takes 1 ms or 10 ms (a sleep, as a step that waits on a GPU
   does) followed by an all-reduce of one gradient-sized tensor on the job's default group, as DDP does every step,
   with nothing pending, once without a bridge and once with `Bridge(run)` on every rank. The figure is the time
   spent inside `bridge.step()` per step (sync points included), as a share of the step; the wall-clock difference
   of the two loops is printed too. Targets at 4 ranks: <= 1% of a 10 ms step, <= 5% of a 1 ms step.
   `--free` runs the loops without the all-reduce: then nothing but the bridge keeps the ranks together, and the
   time a fast rank spends at a sync point waiting for a slow one (up to one interval of slack) counts as the
   bridge's, although a real job would spend it in its own all-reduce.
2. Command latency: `set_hparam lr` commands sent from this process while a 4-rank job runs 1 ms steps, from the
   command's `sent_at` to the moment the LAST rank sees the new lr after `step()` returns. Target: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_SHARE_10MS, IDLE_SHARE_1MS, LATENCY_P99_MS = 0.01, 0.05, 50.0


def worker(
    run: str, rank: int, world: int, port: int, step_ms: float, steps: int, bridge_on: bool, out: str, free: bool
) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    inside = 0.0
    seen: list[tuple[float, float]] = []
    bridge = None
    if bridge_on:
        from bidviz import Bridge

        bridge = Bridge(run, hook_budget=5.0)
        bridge.bind_optimizer(opt)
    dist.barrier()
    lr = opt.param_groups[0]["lr"]
    started = time.perf_counter()
    step = 0
    grad = torch.ones(256)
    while step < steps or (steps == 0 and not (bridge and bridge.should_stop)):
        time.sleep(step_ms / 1000)
        if not free:
            dist.all_reduce(grad)  # the job's own per-step collective (DDP's gradient all-reduce)
        if bridge is not None:
            t0 = time.perf_counter()
            bridge.step(step)
            inside += time.perf_counter() - t0
            if opt.param_groups[0]["lr"] != lr:
                lr = opt.param_groups[0]["lr"]
                seen.append((time.time(), lr))
        step += 1
    total = time.perf_counter() - started
    if bridge is not None:
        bridge.close()
    Path(out).write_text(json.dumps({"rank": rank, "steps": step, "total": total, "inside": inside, "seen": seen}))
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(
    base: Path, world: int, step_ms: float, steps: int, bridge_on: bool, free: bool = False
) -> tuple[list[dict], list]:
    run = base / f"w{world}-{step_ms}-{int(bridge_on)}-{time.monotonic_ns()}"
    run.mkdir(parents=True)
    port = _port()
    outs = [run / f"out{k}.json" for k in range(world)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(run),
                str(k),
                str(world),
                str(port),
                str(step_ms),
                str(steps),
                str(int(bridge_on)),
                str(outs[k]),
                str(int(free)),
            ]
        )
        for k in range(world)
    ]
    return [json.loads(o.read_text()) for o in outs if _wait(procs)], procs


def _wait(procs: list[subprocess.Popen]) -> bool:
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise SystemExit(f"a rank failed (exit {p.returncode})")
    return True


def idle(base: Path, quick: bool, free: bool) -> bool:
    ok = True
    how = "no per-step collective of the job's own" if free else "each step ends in the job's all-reduce"
    print(f"1. Idle cost per step, nothing pending (time inside bridge.step(), as a share of the step; {how})")
    for step_ms in (10.0, 1.0):
        steps = int((1.5 if quick else 4.0) * 1000 / step_ms)
        for world in (1, 2, 4):
            plain, _ = run_job(base, world, step_ms, steps, False, free)
            with_bridge, _ = run_job(base, world, step_ms, steps, True, free)
            inside = max(r["inside"] / r["steps"] for r in with_bridge)
            wall = max(r["total"] / r["steps"] for r in with_bridge) - max(r["total"] / r["steps"] for r in plain)
            share = inside / (step_ms / 1000)
            target = IDLE_SHARE_10MS if step_ms == 10.0 else IDLE_SHARE_1MS
            verdict = "" if world != 4 else ("PASS" if share <= target else "MISS")
            ok &= verdict != "MISS"
            print(
                f"  {step_ms:>4g} ms step, {world} rank(s): {inside * 1e6:8.1f} us in step() = {share * 100:5.2f}% "
                f"(wall clock {wall * 1e6:+8.1f} us a step)  {'target <= %g%% ' % (target * 100) if verdict else ''}"
                f"{verdict}"
            )
    return ok


def latency(base: Path, quick: bool) -> bool:
    from bidviz import protocol
    from bidviz.channel import Mailbox

    world, n = 4, 15 if quick else 40
    run = base / f"latency-{time.monotonic_ns()}"
    run.mkdir(parents=True)
    port = _port()
    outs = [run / f"out{k}.json" for k in range(world)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(run),
                str(k),
                str(world),
                str(port),
                "1.0",
                "0",
                "1",
                str(outs[k]),
                "0",
            ]
        )
        for k in range(world)
    ]
    mb = Mailbox(run)
    deadline = time.monotonic() + 60
    while mb.read_state() is None or mb.read_state().get("step") is None:
        if time.monotonic() > deadline:
            raise SystemExit("the job did not start")
        time.sleep(0.05)
    sent: dict[float, float] = {}
    for i in range(n):
        value = 0.001 * (i + 1)
        cmd = protocol.make_command("set_hparam", {"name": "lr", "value": value})
        mb.send(cmd)
        sent[value] = cmd.sent_at
        if mb.wait_response(cmd.id, 30) is None:
            raise SystemExit("no answer")
        time.sleep(0.05)
    mb.send(protocol.make_command("stop", {}))
    results = [json.loads(o.read_text()) for o in outs if _wait(procs)]
    lat = []
    for value, at in sent.items():
        last = max(next(t for t, v in r["seen"] if abs(v - value) < 1e-12) for r in results)
        lat.append((last - at) * 1000)
    lat.sort()
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    ok = p99 <= LATENCY_P99_MS
    print(f"2. Command latency, {world} ranks, 1 ms steps, {n} commands: sent_at -> the last rank sees it")
    print(
        f"  p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {lat[-1]:.1f} ms   target p99 <= {LATENCY_P99_MS:g} ms  "
        f"{'PASS' if ok else 'MISS'}"
    )
    return ok


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        worker(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), int(a[5]), a[6] == "1", a[7], a[8] == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--free", action="store_true", help="loops without the job's own per-step all-reduce")
    opts = parser.parse_args()
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}  load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bidviz-ranks-") as base:
        ok = idle(Path(base), opts.quick, opts.free)
        ok &= latency(Path(base), opts.quick)
    print("Summary:", "PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

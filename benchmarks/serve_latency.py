"""`bidviz serve` live latency, measured in real Chromium: from the moment training logs a value (the event's wall
time) to the moment the page has drawn it in its chart.

    python benchmarks/serve_latency.py [--seconds 15] [--flush default 1.0] [--clients 50] [--runs 1000]

A training process (a Bridge, one metric `value` per step every 20 ms, at the Bridge's defaults, then
`Bridge(flush_secs=F)` for each other F given) and
`bidviz serve` run on loopback; headless Chromium (/usr/bin/chromium) opens the page and records when each
series' newest point was drawn (`window.bidvizDrawn`). A value's latency is the first draw of a step >= its own,
minus its wall time in the event file. Then `--clients` raw SSE clients follow the same run while the browser
measures again (they must all keep up: every client receives the run's last step), and a log directory of 1,000
runs is listed (`GET runs`). Target: p50 <= 100 ms, p95 <= 250 ms. Figures on a loaded, shared machine vary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

P50_MS, P95_MS = 100.0, 250.0
TAG = "bidviz/value"

TRAINER = textwrap.dedent(
    """
    import sys, time
    from bidviz import Bridge
    run, flush, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with Bridge(run, **({} if flush == "default" else {"flush_secs": float(flush)})) as bridge:
        bridge.add_metric("value", "step * 1.0")
        end = time.time() + seconds
        step = 0
        while time.time() < end:
            bridge.step(step)
            step += 1
            time.sleep(0.02)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def sse_client(url: str, stop: threading.Event, last: dict[int, int], key: int) -> None:
    with urllib.request.urlopen(url, timeout=60) as resp:
        name = ""
        while not stop.is_set():
            line = resp.readline().decode()
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: ") and name == "scalars":
                points = json.loads(line[6:])["points"].get(TAG)
                if points:
                    last[key] = points[-1][0]


async def browse(url: str, seconds: float) -> list[dict[str, float]]:
    from playwright.async_api import async_playwright

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = await browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)  # for wait_for_function
        await page.goto(url)
        await page.wait_for_function(f"window.bidvizLatest && window.bidvizLatest[{TAG!r}]", timeout=30000)
        await page.evaluate("window.bidvizDrawn.length = 0")
        await page.wait_for_timeout(seconds * 1000)
        drawn = await page.evaluate(f"window.bidvizDrawn.filter((d) => d.tag === {TAG!r})")
        await browser.close()
    return drawn


def latencies(run: Path, drawn: list[dict[str, float]]) -> list[float]:
    from bidviz.writers import read_scalars

    written = {step: wall for step, wall, _ in read_scalars(run)[TAG]}
    out = []
    first = drawn[0]["step"] if drawn else 0
    for step, wall in sorted(written.items()):
        if step <= first:
            continue
        seen = next((d["at"] for d in drawn if d["step"] >= step), None)
        if seen is not None:
            out.append(seen - wall * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else float("nan")


def measure(base: Path, flush: str, seconds: float, clients: int) -> None:
    logdir = base / f"flush-{flush}"
    run = logdir / "run"
    run.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(run), str(flush), str(seconds * 2 + 30)], env=env)
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "bidviz", "serve", "--logdir", str(logdir), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    stop = threading.Event()
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        time.sleep(2)
        lat = latencies(run, asyncio.run(browse(url, seconds)))
        print(
            f"flush_secs={flush:<7} 1 browser : {len(lat)} values, latency p50 {pct(lat, 50):7.1f} ms, "
            f"p95 {pct(lat, 95):7.1f} ms (target {P50_MS:.0f} / {P95_MS:.0f})"
        )
        if clients:
            last: dict[int, int] = {}
            threads = [
                threading.Thread(target=sse_client, args=(f"{url}api/events?run=run", stop, last, i), daemon=True)
                for i in range(clients)
            ]
            for t in threads:
                t.start()
            lat = latencies(run, asyncio.run(browse(url, seconds)))
            newest = max(last.values(), default=-1)
            behind = sum(1 for i in range(clients) if last.get(i, -1) < newest - 50)
            print(
                f"flush_secs={flush:<7} +{clients} SSE: {len(lat)} values, latency p50 {pct(lat, 50):7.1f} ms, "
                f"p95 {pct(lat, 95):7.1f} ms; clients more than 50 steps behind: {behind}"
            )
    finally:
        stop.set()
        for p in (serve, trainer):
            p.terminate()
            p.wait(10)


def list_runs(base: Path, n: int) -> None:
    from bidviz.channel import Mailbox
    from bidviz.writers import EventWriter

    logdir = base / "many"
    for i in range(n):
        with EventWriter(logdir / f"run{i:04d}", flush_secs=0) as w:
            w.add_scalar("loss", 1.0, 0)
        Mailbox(logdir / f"run{i:04d}").create()
    from starlette.testclient import TestClient

    from bidviz.tb_plugin.control_token import TOKEN_HEADER, ensure_token
    from bidviz.tb_plugin.server import create_app

    client = TestClient(create_app(logdir), base_url="http://127.0.0.1")
    headers = {TOKEN_HEADER: ensure_token()}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert len(client.get("/api/runs", headers=headers).json()["runs"]) == n
        times.append(time.perf_counter() - t0)
    print(f"GET runs over {n} runs: best {min(times):.3f} s (target 0.5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--flush", nargs="+", default=["default"], help="flush_secs values of the Bridge ('default': not given)"
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1000)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("XDG_CONFIG_HOME", os.path.join(tmp, "config"))
        for flush in opts.flush:
            measure(Path(tmp), flush, opts.seconds, opts.clients)
        list_runs(Path(tmp), opts.runs)


if __name__ == "__main__":
    main()

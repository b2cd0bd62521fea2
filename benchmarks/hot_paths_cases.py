"""The measurements of hot_paths.py: `<section>_figures(root, quick, old)` returns plain numbers (JSON, so an old
revision can measure them in a subprocess), `<section>_report(new, old)` prints them side by side with the targets
and says whether they are met."""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bridge_overhead import NullWriter  # a writer that drops everything: what is left is the bridge's own work

METRICS_RATIO = 1.2


def row(label: str, *cells: str, ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  PASS" if ok else "  MISS")
    print(f"  {label:<48}" + "".join(f"{c:>14}" for c in cells) + mark, flush=True)


def best(times: list[float]) -> float:
    return min(times) if times else float("nan")


# -- 1. metrics -----------------------------------------------------------------------------------------------------


def _loss(i: int) -> float:
    return 1.0 / (i + 1)


def _by_hand(writer: Any, tags: list[tuple[int, str]], start: int, n: int) -> float:
    add = writer.add_scalar
    t0 = time.perf_counter()
    for i in range(start, start + n):
        loss = _loss(i)
        for k, tag in tags:
            add(tag, loss * k, i)
    writer.flush()
    return time.perf_counter() - t0


def _bridged(bridge: Any, start: int, n: int) -> float:
    step = bridge.step
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(i, loss=_loss(i))
    bridge.writer.flush()
    return time.perf_counter() - t0


def metrics_figures(root: Path, *, quick: bool, old: bool) -> dict[str, Any]:
    """µs per step, best of the repeats, for N metrics per step."""
    from bidviz.bridge import Bridge
    from bidviz.writers import EventWriter

    values = 60_000 if quick else 300_000  # metric values a repeat, whatever N
    repeats = 3 if quick else 5
    out: dict[str, Any] = {}
    for n_metrics in (1, 10, 100):
        steps = values // n_metrics
        tags = [(k, f"bidviz/m{k}") for k in range(n_metrics)]
        subjects: dict[str, tuple[Any, Any]] = {
            "bridge": (Bridge(root / f"b{n_metrics}", flush_secs=1.0), _bridged),
            "null": (Bridge(root / f"n{n_metrics}", writer=NullWriter()), _bridged),
        }
        if not old:
            from tensorboardX import SummaryWriter as TbxWriter
            from torch.utils.tensorboard import SummaryWriter as TorchWriter

            subjects["ours"] = (EventWriter(root / f"o{n_metrics}", flush_secs=1.0), _by_hand)
            subjects["tbx"] = (TbxWriter(str(root / f"x{n_metrics}"), flush_secs=1), _by_hand)
            subjects["torch"] = (TorchWriter(str(root / f"t{n_metrics}"), flush_secs=1), _by_hand)
        times: dict[str, list[float]] = {name: [] for name in subjects}
        try:
            for name in ("bridge", "null"):
                for k in range(n_metrics):
                    subjects[name][0].add_metric(f"m{k}", f"loss * {k}")

            def once(name: str, start: int, count: int, subjects: Any = subjects, tags: Any = tags) -> float:
                obj, fn = subjects[name]
                return fn(obj, start, count) if fn is _bridged else fn(obj, tags, start, count)

            for name in subjects:  # warm up
                once(name, 0, max(50, steps // 20))
            start = steps
            for _ in range(repeats):
                gc.collect()
                for name in subjects:
                    times[name].append(once(name, start, steps))
                start += steps
        finally:
            for obj, _ in subjects.values():
                obj.close()
        out[str(n_metrics)] = {name: best(t) / steps * 1e6 for name, t in times.items()}
        out[str(n_metrics)]["median_bridge"] = statistics.median(times["bridge"]) / steps * 1e6
    return out


def metrics_report(new: dict[str, Any], old: dict[str, Any]) -> bool:
    print("\n1. Metric hooks: µs per step (best of repeats), N add_metric scalars vs the same N values by hand")
    ok = True
    row("", "N=1", "N=10", "N=100")
    labels = [
        ("ours", "by hand, our EventWriter"),
        ("tbx", "by hand, tensorboardX SummaryWriter"),
        ("torch", "by hand, torch SummaryWriter"),
        ("bridge", "Bridge, N metrics (EventWriter)"),
    ]
    keys = ("1", "10", "100")
    for name, label in labels:
        row(label, *(f"{new[k][name]:.2f}" for k in keys))
    if old:
        row("Bridge, old revision", *(f"{old[k]['bridge']:.2f}" for k in keys))
    ratios = [new[k]["bridge"] / new[k]["ours"] for k in keys]
    ok = all(r <= METRICS_RATIO for r in ratios)
    row(f"=> Bridge / by hand with EventWriter (<= {METRICS_RATIO})", *(f"{r:.2f}x" for r in ratios), ok=ok)
    if old:
        row("   old Bridge / by hand with EventWriter", *(f"{old[k]['bridge'] / new[k]['ours']:.2f}x" for k in keys))
    row("   Bridge / tensorboardX", *(f"{new[k]['bridge'] / new[k]['tbx']:.2f}x" for k in keys))
    row("   Bridge / torch", *(f"{new[k]['bridge'] / new[k]['torch']:.2f}x" for k in keys))
    per_value = [new[k]["null"] / int(k) for k in keys]
    row("   bridge's own work per value (null writer), µs", *(f"{v:.2f}" for v in per_value))
    if old:
        row("   old: bridge's own work per value, µs", *(f"{old[k]['null'] / int(k):.2f}" for k in keys))
    return ok


# -- 2. journal -----------------------------------------------------------------------------------------------------


def _command_line(i: int) -> bytes:
    cid = f"{i:032x}"
    response = {
        "v": 1,
        "id": cid,
        "kind": "set_hparam",
        "status": "applied",
        "step": i,
        "result": None,
        "repr": "{'name': 'lr', 'value': 0.1}",
        "error": None,
        "received_at": 1.0,
        "applied_at": 1.0,
    }
    entry = {
        "time": 1.0,
        "step": i,
        "event": "command",
        "id": cid,
        "kind": "set_hparam",
        "label": "set lr=0.1",
        "args": {"name": "lr", "value": 0.001 * (i % 100)},
        "sender": "cli:bench@host",
        "status": "applied",
        "error": None,
        "response": response,
    }
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def write_journal(path: Path, lines: int, *, checkpoints: bool) -> None:
    checkpoint = b'{"event":"checkpoint","hparams":{"lr":0.05},"metrics":{},"interrupted":{}}\n'
    with open(path, "wb") as f:
        for i in range(lines):
            f.write(checkpoint if checkpoints and i % 1000 == 999 else _command_line(i))


def _timed(fn: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def journal_figures(root: Path, *, quick: bool, old: bool) -> dict[str, Any]:
    """ms per `GET journal?limit=200` (the core's method, no HTTP), and with `since=` its version."""
    from bidviz.channel import Mailbox
    from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns

    out: dict[str, Any] = {}
    for lines in (1_000, 10_000, 100_000):
        run = root / f"j{lines}"
        mailbox = Mailbox(run)
        mailbox.create()
        write_journal(mailbox.journal_path, lines, checkpoints=True)
        core = ControlPlane(str(root), DirectoryRuns(root))
        answer = core.journal(f"j{lines}", 200)
        out[str(lines)] = {"full": _timed(lambda: core.journal(f"j{lines}", 200)) * 1e3}  # noqa: B023
        out[str(lines)]["bytes"] = len(json.dumps(answer["entries"]))
        if "version" in answer:
            v = answer["version"]
            out[str(lines)]["since"] = _timed(lambda: core.journal(f"j{lines}", 200, v)) * 1e3  # noqa: B023
    return out


def journal_report(new: dict[str, Any], old: dict[str, Any]) -> bool:
    print(
        "\n2. GET journal?limit=200: ms per request (the core, no HTTP), journals with a checkpoint every 1,000 lines"
    )
    keys = ("1000", "10000", "100000")
    row("", "1k lines", "10k lines", "100k lines")
    if old:
        row("old revision (reads the whole journal)", *(f"{old[k]['full']:.1f}" for k in keys))
    row("from the end", *(f"{new[k]['full']:.2f}" for k in keys))
    row("since=<version>, nothing appended", *(f"{new[k]['since']:.3f}" for k in keys))
    row("answer size, KB", *(f"{new[k]['bytes'] / 1e3:.0f}" for k in keys))
    ok = new["100000"]["full"] <= 3 * new["1000"]["full"] + 1.0
    row("=> 100k lines cost about what 1k lines cost", f"{new['100000']['full'] / new['1000']['full']:.1f}x", ok=ok)
    return ok


# -- 3. runs --------------------------------------------------------------------------------------------------------


def _serve_runs(root: Path, n: int) -> float | None:
    """Seconds per `GET /api/runs` through `bidviz serve`'s app (Starlette, JSON encoding included), or None when
    this revision or environment has no server."""
    try:
        from starlette.testclient import TestClient

        from bidviz.tb_plugin.control_token import TOKEN_HEADER
        from bidviz.tb_plugin.server import create_app
    except ImportError:
        return None
    token = "benchmark-token-0123456789"  # the app's own: the user's control token is never touched
    client = TestClient(create_app(root, token=token), base_url="http://127.0.0.1")

    def get() -> None:
        assert len(client.get("/api/runs", headers={TOKEN_HEADER: token}).json()["runs"]) == n

    return _timed(get, 2)


def runs_figures(root: Path, *, quick: bool, old: bool) -> dict[str, Any]:
    """seconds per `GET runs` and `GET state` over N runs (a directory walk lists them, as `bidviz serve` does)."""
    from bidviz.channel import Mailbox
    from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns

    out: dict[str, Any] = {}
    made = 0
    for n in (100, 1_000) if quick else (100, 1_000, 10_000):
        for i in range(made, n):
            run = root / f"r{i:05d}"
            run.mkdir()
            (run / "events.out.tfevents.1.host.1.0").write_bytes(b"")
            if i % 10 == 0:  # a run in ten has a bridge
                mailbox = Mailbox(run)
                mailbox.create()
                mailbox.write_state({"v": 1, "pid": 1, "host": "h", "heartbeat": 1.0, "step": i, "paused": False})
        made = n
        core = ControlPlane(str(root), DirectoryRuns(root))
        assert len(core.runs()["runs"]) == n
        out[str(n)] = {
            "runs": _timed(core.runs, 2),
            "state": _timed(lambda: core.state("r00000"), 3),  # noqa: B023
            "walk": _timed(lambda: core.source.run_names(), 2),  # noqa: B023
            "serve": _serve_runs(root, n),
        }
    return out


def runs_report(new: dict[str, Any], old: dict[str, Any]) -> bool:
    print("\n3. GET runs / GET state: seconds per request (the core; runs listed by a directory walk)")
    keys = [k for k in ("100", "1000", "10000") if k in new]
    secs = lambda figures, k, what: "-" if figures[k].get(what) is None else f"{figures[k][what]:.3f}"  # noqa: E731
    row("", *(f"{int(k):,} runs" for k in keys))
    if old:
        row("old revision: directory walk", *(secs(old, k, "walk") for k in keys))
    row("directory walk alone (the run source)", *(secs(new, k, "walk") for k in keys))
    if old:
        row("old revision: GET runs", *(secs(old, k, "runs") for k in keys))
    row("GET runs", *(secs(new, k, "runs") for k in keys))
    if old:
        row("old revision: bidviz serve GET /api/runs", *(secs(old, k, "serve") for k in keys))
    row("bidviz serve GET /api/runs (HTTP, JSON)", *(secs(new, k, "serve") for k in keys))
    if old:
        row("old revision: GET state", *(secs(old, k, "state") for k in keys))
    row("GET state", *(secs(new, k, "state") for k in keys))
    ok = new[keys[-1]]["runs"] <= 0.5 * int(keys[-1]) / 10_000
    row("=> GET runs at the most runs (<= 0.5 s per 10,000)", f"{new[keys[-1]]['runs']:.3f} s", ok=ok)
    serve = new["1000"].get("serve")
    if serve is not None:
        row("=> bidviz serve GET /api/runs, 1,000 runs (<= 0.5 s)", f"{serve:.3f} s", ok=serve <= 0.5)
        ok = ok and serve <= 0.5
    return ok


# -- 4. data --------------------------------------------------------------------------------------------------------


def data_figures(root: Path, *, quick: bool, old: bool) -> dict[str, Any]:
    """seconds per `GET data` of a 1M-point series (json and csv): first, repeat, after 1,000 more points; and
    TensorBoard's EventAccumulator keeping every point, with its scalars route's JSON, for reference."""
    from bidviz.tb_plugin.core import ControlPlane, DirectoryRuns
    from bidviz.writers import EventWriter

    points = 200_000 if quick else 1_000_000
    run = root / "run"
    writer = EventWriter(run, flush_secs=60)
    for i in range(points):
        writer.add_scalar("loss", 1.0 / (i + 1), i)
    writer.flush()
    core = ControlPlane(str(root), DirectoryRuns(root))
    out: dict[str, Any] = {"points": points}
    for fmt in ("json", "csv"):
        t0 = time.perf_counter()
        core.data("run", "loss", fmt)
        out[f"{fmt}_first"] = time.perf_counter() - t0
        out[f"{fmt}_repeat"] = _timed(lambda: core.data("run", "loss", fmt), 2)  # noqa: B023
    for i in range(points, points + 1000):
        writer.add_scalar("loss", 0.5, i)
    writer.flush()
    t0 = time.perf_counter()
    body, _, _ = core.data("run", "loss", "json")
    out["json_appended"] = time.perf_counter() - t0
    out["bytes"] = len(body)
    writer.close()
    if not old:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        def tensorboard() -> None:
            acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
            acc.Reload()
            json.dumps([[e.wall_time, e.step, e.value] for e in acc.Scalars("loss")])

        out["tensorboard"] = _timed(tensorboard, 1)
    return out


def data_report(new: dict[str, Any], old: dict[str, Any]) -> bool:
    print(f"\n4. GET data of one series of {new['points']:,} points: seconds per request (the core, no HTTP)")
    row("", "json", "csv")
    row("TensorBoard: EventAccumulator, all points, + JSON", f"{new['tensorboard']:.2f}", "")
    if old:
        row("old revision (every request reads the file)", f"{old['json_first']:.2f}", f"{old['csv_first']:.2f}")
        row("old revision, repeat", f"{old['json_repeat']:.2f}", f"{old['csv_repeat']:.2f}")
    row("first request", f"{new['json_first']:.2f}", f"{new['csv_first']:.2f}")
    row("repeat, nothing appended", f"{new['json_repeat']:.4f}", f"{new['csv_repeat']:.4f}")
    row("after 1,000 more points", f"{new['json_appended']:.4f}", "")
    first_ok = new["json_first"] * 2 <= new["tensorboard"]
    repeat_ok = new["json_repeat"] * 10 <= new["json_first"]
    row("=> first vs TensorBoard (>= 2x faster)", f"{new['tensorboard'] / new['json_first']:.1f}x", ok=first_ok)
    row("=> repeat vs first (>= 10x faster)", f"{new['json_first'] / new['json_repeat']:.0f}x", ok=repeat_ok)
    return first_ok and repeat_ok


# -- 5. resume ------------------------------------------------------------------------------------------------------


def resume_figures(root: Path, *, quick: bool, old: bool) -> dict[str, Any]:
    """seconds for `Bridge(run)` to start (and close) on a journal of N lines, with checkpoints as the recorder
    writes them and without (a journal from before checkpoints), resume=True and False; an empty run for reference."""
    import shutil

    from bidviz.bridge import Bridge

    def start(journal: Path | None, resume: bool) -> float:
        run = root / "run"
        shutil.rmtree(run, ignore_errors=True)
        (run / ".bidviz").mkdir(parents=True, mode=0o700)
        if journal is not None:
            shutil.copy(journal, run / ".bidviz" / "journal.jsonl")
        t0 = time.perf_counter()
        Bridge(run, resume=resume).close()
        return time.perf_counter() - t0

    out: dict[str, Any] = {"empty": min(start(None, True) for _ in range(3))}
    for lines in (10_000, 100_000) if quick else (10_000, 100_000, 300_000):
        for checkpoints in (True, False):
            journal = root / f"journal-{lines}-{checkpoints}.jsonl"
            write_journal(journal, lines, checkpoints=checkpoints)
            for resume in (True, False):
                out[f"{lines}/{'ckpt' if checkpoints else 'none'}/{resume}"] = min(
                    start(journal, resume) for _ in range(2)
                )
            journal.unlink()
    return out


def resume_report(new: dict[str, Any], old: dict[str, Any]) -> bool:
    print("\n5. Bridge() start and close on a journal of N lines, seconds (an empty run first)")
    sizes = sorted({int(k.split("/")[0]) for k in new if "/" in k})
    row("", *(f"{n:,} lines" for n in sizes))
    row("empty run", f"{new['empty']:.3f}" + (f" (old {old['empty']:.3f})" if old else ""))
    for kind, label in (("ckpt", "checkpoints every 1,000 lines"), ("none", "no checkpoint (an old journal)")):
        for resume in (True, False):
            key = [f"{n}/{kind}/{resume}" for n in sizes]
            if old:
                row(f"old: {label}, resume={resume}", *(f"{old[k]:.3f}" for k in key))
            row(f"{label}, resume={resume}", *(f"{new[k]:.3f}" for k in key))
    worst = max(new[f"{n}/ckpt/{r}"] for n in sizes for r in (True, False))
    ok = worst <= new["empty"] + 0.2
    row("=> with checkpoints, at most the empty run + 0.2 s", f"{worst:.3f}", ok=ok)
    return ok

"""The measurements of hot_paths.py: `<section>_figures(root, quick, old)` returns plain numbers (JSON, so an old
revision can measure them in a subprocess), `<section>_report(new, old)` prints them side by side with the targets
and says whether they are met."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Any

METRICS_RATIO = 1.2


def row(label: str, *cells: str, ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  PASS" if ok else "  MISS")
    print(f"  {label:<48}" + "".join(f"{c:>14}" for c in cells) + mark, flush=True)


def best(times: list[float]) -> float:
    return min(times) if times else float("nan")


# -- 1. metrics -----------------------------------------------------------------------------------------------------


class NullWriter:
    """A writer that drops everything: what is left is the bridge's own work."""

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

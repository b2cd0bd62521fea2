"""The hot paths of issue 12, each figure beside its reference measured in the same run.

    python benchmarks/hot_paths.py [--quick] [--only metrics,journal,runs,data,resume,reader]
                                   [--old PYTHON] [--dir BASE]

1. metrics: N add_metric scalars per step (N = 1, 10, 100) against the same values written by hand with our
   EventWriter, tensorboardX's and torch's SummaryWriter; the bridge's own work per value with a null writer.
2. journal: `GET journal?limit=200` at 1k / 10k / 100k journal lines; a repeat with nothing appended.
3. runs: `GET runs` and `GET state` with 100 / 1,000 / 10,000 runs.
4. data: `GET data` of 1M points, first read and a repeat, against TensorBoard's all-points scalar route.
5. resume: `Bridge(resume=True/False)` start-up on 10k / 100k / 300k journal lines.
6. reader: read_scalars events/s against TensorBoard's EventAccumulator.

`--old PYTHON` names an interpreter where an earlier revision of bidviz is installed (e.g. a git worktree in a venv:
`git worktree add /tmp/old HEAD~5 && python -m venv --system-site-packages /tmp/oldvenv &&
/tmp/oldvenv/bin/pip install --no-deps -e /tmp/old`): every figure is then also measured with it, in the same
run, in a subprocess, and printed as the "old" column. Timings on a shared or loaded machine vary; compare columns
of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hot_paths_cases as cases  # noqa: E402

SECTIONS = ("metrics", "journal", "runs", "data", "resume")


def run_old(python: str, section: str, quick: bool, base: str | None) -> dict[str, Any]:
    """The section's figures measured by `python` (another bidviz installed), as JSON from a subprocess."""
    cmd = [python, "-P", os.path.abspath(__file__), "--worker", section]
    if quick:
        cmd.append("--quick")
    if base:
        cmd += ["--dir", base]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=3600)
    if out.returncode != 0:
        print(f"  (old revision failed on {section}: {out.stderr.strip()[-600:]})")
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(section: str, quick: bool, base: str | None, *, old: bool) -> dict[str, Any]:
    fn: Callable[..., dict[str, Any]] = getattr(cases, f"{section}_figures")
    with tempfile.TemporaryDirectory(prefix=f"bidviz-hot-{section}-", dir=base) as root:
        return fn(Path(root), quick=quick, old=old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--old", default=None, help="an interpreter with an earlier bidviz: the 'old' column")
    parser.add_argument("--dir", default=None, help="base directory for the temporary runs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # inside the old interpreter: only what the bridge or the plugin does, as JSON
        print(json.dumps(measure(args.worker, args.quick, args.dir, old=True)))
        return 0
    import bidviz

    print(f"bidviz from {os.path.dirname(bidviz.__file__)}; cpus {os.cpu_count()}; python {sys.version.split()[0]}")
    ok = True
    t0 = time.perf_counter()
    for section in args.only.split(","):
        section = section.strip()
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        new = measure(section, args.quick, args.dir, old=False)
        before = run_old(args.old, section, args.quick, args.dir) if args.old else {}
        ok &= getattr(cases, f"{section}_report")(new, before)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {'every target met' if ok else 'some target MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`pip install .` (not only `-e .`) gives a working package: every sub-package, the CLI, the typed marker, and the
fast step's C extension compiled from its source."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_package_and_installs_a_working_cli(tmp_path):
    # Build from a clean copy: a stale build/ folder would hide a package missing from pyproject.toml.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns("build", ".git", "*.egg-info", "runs", "__pycache__", "*.so")
    )
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(src)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("tensorboard_bidviz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "bidviz/protocol.py",
        "bidviz/py.typed",
        "bidviz/cli/__init__.py",
        "bidviz/bridge/core.py",
        "bidviz/writers/adapters.py",
    ):
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    native = [n for n in names if n.startswith("bidviz/bridge/_faststep.") and n.endswith(".so")]
    assert native, f"the C fast step was not compiled into {wheel.name} (a C compiler and Python's headers needed)"
    assert not any(n.endswith(".c") for n in names), "C sources are compiled, not shipped"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    # Run from elsewhere, so that the source tree cannot stand in for the installed package.
    out = subprocess.run(
        [
            python,
            "-c",
            "import bidviz, bidviz.bridge, bidviz.writers, bidviz.cli; from bidviz.bridge import _faststep, faststep;"
            "assert faststep.NativeStep is _faststep.Step; print(bidviz.__file__, _faststep.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(str(env_dir)) == 2, out.stdout
    cli = subprocess.run([env_dir / "bin" / "bidviz", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip().endswith("0.1.0")

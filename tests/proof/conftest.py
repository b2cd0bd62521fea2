"""The proof suite of "no file or code can crash training, every command runs at most once".

Short mode (the default, for CI) and long mode (`BIDVIZ_PROOF=long`, `scripts/proof.sh`, nightly) run the same
tests with different figures. Every part prints one summary line (tried / answered / lost / double-applied /
crashed) at the end of the session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from proof_helpers import MODE, STARTED, SUMMARY, Trainer  # noqa: E402


@pytest.fixture
def start_trainer(tmp_path: Path) -> Iterator[Any]:
    """Start trainers on run directories under tmp_path; every one still running is killed at the end."""
    started: list[Trainer] = []

    def start(*args: str, run_dir: Path | None = None, env: dict[str, str] | None = None, **kw: Any) -> Trainer:
        t = Trainer(run_dir or tmp_path / "run", *args, env=env, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill9()


@pytest.fixture(scope="session", autouse=True)
def _no_trainer_outlives_the_session() -> Iterator[None]:
    yield
    for t in STARTED:
        t.kill9()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section(f"proof figures ({MODE} mode)")
        for figures in SUMMARY:
            terminalreporter.write_line(figures.line())

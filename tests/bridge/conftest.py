"""Fixtures for bridge tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import Trainer


@pytest.fixture
def start_trainer(tmp_path: Path) -> Iterator[Any]:
    started: list[Trainer] = []

    def start(*args: str, run_dir: Path | None = None, env: dict[str, str] | None = None) -> Trainer:
        t = Trainer(run_dir or tmp_path / "run", *args, env=env)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()

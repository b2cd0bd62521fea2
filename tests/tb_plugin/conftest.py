"""Fixtures for the plugin tests: real training processes with a Bridge and real TensorBoard subprocesses on
127.0.0.1, all stopped when the test ends. Every test has its own config directory (`XDG_CONFIG_HOME`), so the
control token it makes or reads is never the user's own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tab_support import TRAIN_SCRIPT, Proc, TensorBoard, clean_env, request, wait_for


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's `XDG_CONFIG_HOME` (the control token lives in its bidviz/token); subprocesses inherit it."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def start_training(procs: list[Proc], tmp_path: Path) -> Callable[..., Proc]:
    """Start tests/cli/cli_train_script.py on a run directory (a linear model, SGD lr=0.1, `dropout`)."""

    def start(run_dir: Path, *, sleep: float = 0.02, steps: int | None = None) -> Proc:
        cmd = [sys.executable, str(TRAIN_SCRIPT), str(run_dir), "--sleep", str(sleep)]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        p = Proc(cmd, tmp_path / f"train-{len(procs)}.log", clean_env())
        procs.append(p)
        p.wait_output(r"READY")
        return p

    return start


# `import tensorflow` fails (None in sys.modules), so TensorBoard falls back to its stub, as without TF installed.
NO_TF_TENSORBOARD = "import sys; sys.modules['tensorflow'] = None; from tensorboard.main import run_main; run_main()"


@pytest.fixture
def start_tensorboard(procs: list[Proc], tmp_path: Path) -> Callable[..., TensorBoard]:
    """Start the stock `tensorboard` on 127.0.0.1 and a free port; returns once it answers."""

    def start(logdir: Path | None, *extra: str, host: str = "127.0.0.1", tensorflow: bool = False) -> TensorBoard:
        """`logdir=None` leaves --logdir out (give --logdir_spec in `extra`); `host` is the address to bind.
        TensorBoard imports TensorFlow when it is installed (it is, for the TF tests), which makes each start about
        10 s slower; it runs on its own TF stub unless `tensorflow=True` (the TF tests use the real one)."""
        where = ["--logdir", str(logdir)] if logdir is not None else []
        launch = ["-m", "tensorboard.main"] if tensorflow else ["-c", NO_TF_TENSORBOARD]
        cmd = [
            sys.executable,
            *launch,
            *where,
            "--host",
            host,
            "--port",
            "0",
            "--reload_interval",
            "1",
            *extra,
        ]
        p = Proc(cmd, tmp_path / f"tensorboard-{len(procs)}.log", clean_env())
        procs.append(p)
        url = p.wait_output(r"TensorBoard \S+ at (http://\S+:\d+)/").group(1)
        wait_for(lambda: request(url + "/data/plugins_listing")[0] == 200, "TensorBoard to answer", 60)
        return TensorBoard(p, url)

    return start

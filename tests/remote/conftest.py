"""A real S3 API on loopback for the remote tests: moto's server mode on 127.0.0.1 and a free port, one bucket."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from remote_support import Process

BUCKET = "bidviz-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """The environment that points boto3, s3fs, the CLI, training and TensorBoard at the emulated S3."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,  # botocore (s3fs, boto3) reads it
        "S3_ENDPOINT": url,  # TensorBoard's own S3 reader reads this one
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def start(tmp_path: Path, s3: dict[str, str]) -> Iterator[Callable[..., Process]]:
    """Start `python *cmd` with the s3 environment and this test's own control token; ended when the test ends."""
    env = {**s3, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # this test's own control token
    env.pop("BIDVIZ_SECRET", None)
    started: list[Process] = []

    def run(*cmd: str) -> Process:
        p = Process([sys.executable, *cmd], tmp_path / f"proc-{len(started)}.log", env)
        started.append(p)
        return p

    yield run
    for p in reversed(started):
        p.end()

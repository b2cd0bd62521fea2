"""Helpers of the plugin tests: subprocesses with logged output, HTTP requests, TensorBoard's WSGI app."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TRAIN_SCRIPT = HERE.parent / "cli" / "cli_train_script.py"
START_TIMEOUT = 120.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Proc:
    """A subprocess whose output goes to a file, so nothing blocks on a full pipe."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, text=True, env=env)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args[:3]} exited with {self.proc.returncode} early:\n{self.output()[-4000:]}")
            return re.search(pattern, self.output())

        return wait_for(found, f"{pattern!r} in the output of {self.proc.args[:3]}", timeout)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


class TensorBoard:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc = proc
        self.url = url

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(self.url + path, headers=headers)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return request(self.url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})})


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def wsgi_app(logdir: Path, **flags: Any) -> Any:
    """TensorBoard's real WSGI app with the BIDViz plugin (through its entry-point loader) and a real data
    provider over `logdir`; reload the data with `app.reload()`."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    from bidviz.tb_plugin.loader import BIDVizLoader

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    namespace = argparse.Namespace(bidviz_allowed_hosts="", host="127.0.0.1", **flags)
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, flags=namespace)
    app = application.TensorBoardWSGI([BIDVizLoader().load(context)], data_provider=provider)

    def reload() -> None:
        multiplexer.AddRunsFromDirectory(str(logdir))
        multiplexer.Reload()

    app.reload = reload
    return app


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BIDVIZ_SECRET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (a connection from it is not a loopback peer), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a route lookup only: UDP connect sends nothing
            address = s.getsockname()[0]
        except OSError:
            return None
    if ipaddress.ip_address(address).is_loopback:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return None
    return str(address)

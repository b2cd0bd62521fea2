"""JAX multi-process on the CPU (two real processes, `jax.distributed.initialize` with a local coordinator): process
0's sync-point batch reaches the other through `multihost_utils.broadcast_one_to_all`, and `process_allgather`
brings every process's (status, value) to each, the transport docs/distributed.md designs for the Bridge on JAX.
The Bridge itself does not run multi-process JAX yet; this proves the transport works here."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import offline_env

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="jax is not installed")

PROBE = Path(__file__).with_name("jax_multiprocess_probe.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_jax_processes_agree_on_process_zeros_broadcast(tmp_path: Path) -> None:
    port = str(free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(2):
            with (tmp_path / f"p{k}.out").open("w") as out:  # the child holds its own copy of the descriptor
                cmd = [sys.executable, str(PROBE), port, str(k)]
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=offline_env()))
        codes = [p.wait(150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    texts = [(tmp_path / f"p{k}.out").read_text() for k in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-4000:] for t in texts)
    results = [json.loads(next(line for line in t.splitlines() if line.startswith("{"))) for t in texts]

    command = {"kind": "set_hparam", "args": {"name": "lr", "value": 0.01}, "from": 0}
    for k, result in enumerate(results):
        assert (result["process_index"], result["process_count"]) == (k, 2)
        assert result["received"] == [[[command], 7, 0]] * 2, f"process {k} did not get process 0's batch"
        assert result["empty"] == [[], 3, 0], "an empty sync point: the leader's interval, no payload"
        assert result["gathered"] == [[1.0, 0.5], [1.0, 1.5]], "every process's value, in process order"

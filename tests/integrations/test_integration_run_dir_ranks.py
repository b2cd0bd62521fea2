"""`integrations._common.run_dir_on_every_rank` on two real processes (gloo, CPU): every rank gets rank 0's
directory, only rank 0 keeps its writer, and a choice that fails on rank 0 fails on every rank instead of leaving
the others waiting in the broadcast."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from conftest import offline_env

pytest.importorskip("torch")

RANK = r"""
import datetime, json, sys
import torch.distributed as dist
from bidviz.integrations._common import run_dir_on_every_rank

port, rank, fail = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fail"
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))

def choose():
    if fail:
        raise ValueError(f"no directory on rank {rank}")
    return f"runs/of-rank-{rank}", f"writer-of-rank-{rank}"

try:
    run_dir, writer = run_dir_on_every_rank(choose)
    print(json.dumps({"run_dir": run_dir, "writer": writer}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(mode: str) -> list[dict[str, str]]:
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, port, str(k), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=offline_env(),
        )
        for k in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_every_rank_gets_rank_zeros_directory_and_only_rank_zero_a_writer() -> None:
    assert run_ranks("ok") == [
        {"run_dir": "runs/of-rank-0", "writer": "writer-of-rank-0"},
        {"run_dir": "runs/of-rank-0", "writer": None},
    ]


def test_a_choice_that_fails_on_rank_zero_fails_on_every_rank() -> None:
    rank0, rank1 = run_ranks("fail")
    assert rank0 == {"error": "ValueError: no directory on rank 0"}
    why = "rank 0 could not choose the run directory: ValueError: no directory on rank 0"
    assert rank1 == {"error": f"RuntimeError: {why}"}

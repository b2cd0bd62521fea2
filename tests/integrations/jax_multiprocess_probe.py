"""One JAX process of a two-process CPU job, proving the transport docs/distributed.md designs for JAX:

    python jax_multiprocess_probe.py PORT PROCESS_ID

`jax.distributed.initialize` joins the job through a coordinator on 127.0.0.1:PORT; then three sync points as the
design has them: process 0 sends a header (payload size, interval, flags) with `broadcast_one_to_all`, then, when
the size is not 0, the JSON batch as bytes (a second broadcast: every process must pass arrays of the same shape).
A reduced metric's (status, value) pairs travel with `process_allgather`. Prints one JSON line of what this process
received.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def sync_point(batch: list[dict[str, object]], every: int, flags: int) -> tuple[list[object], int, int]:
    """The leader's (batch, every, flags) on every process: what `Ranks.exchange` does over torch.distributed."""
    from jax.experimental import multihost_utils

    leader = jax.process_index() == 0
    payload = json.dumps(batch).encode() if leader and batch else b""
    mine = np.array([len(payload), every, flags] if leader else [0, 0, 0], dtype=np.int32)
    size, every, flags = (int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(mine)))
    if not size:
        return [], every, flags
    buf = np.frombuffer(payload, dtype=np.uint8) if leader else np.zeros(size, dtype=np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(buf), dtype=np.uint8)
    return json.loads(data.tobytes()), every, flags


def main() -> int:
    port, pid = sys.argv[1], int(sys.argv[2])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60
    )
    from jax.experimental import multihost_utils

    leader = jax.process_index() == 0
    # Only the leader's arguments count: the others pass their own, which must be dropped.
    command = {"kind": "set_hparam", "args": {"name": "lr", "value": 0.01}, "from": pid}
    received = [sync_point([command] if leader else [{"from": pid}], 7 + pid, pid) for _ in range(2)]
    empty = sync_point([], 3 + pid, 0)
    gathered = multihost_utils.process_allgather(np.array([1.0, 0.5 + pid], dtype=np.float32))
    multihost_utils.sync_global_devices("probe done")
    print(
        json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "received": received,
                "empty": empty,
                "gathered": np.asarray(gathered).tolist(),
            }
        ),
        flush=True,
    )
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

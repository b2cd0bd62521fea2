"""The training side runs without tensorboard, starlette or uvicorn installed (and without torch, for others)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys, time

    class Absent:
        # Behaves as if these packages were not installed at all.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    BLOCKED = set(sys.argv[2].split(","))
    sys.meta_path.insert(0, Absent())

    from bidviz import Bridge, protocol
    from bidviz.channel import Mailbox

    with Bridge(sys.argv[1]) as bridge:
        bridge.hparam("lr", 0.1, min=0.0)
        mb = Mailbox(sys.argv[1])
        ids = [mb.send(protocol.make_command("set_hparam", {"name": "lr", "value": 0.5})),
               mb.send(protocol.make_command("add_metric", {"name": "sq", "code": "step ** 2"})),
               mb.send(protocol.make_command("add_metric", {"name": "arr", "code": "np.arange(step + 1.0)"}))]
        for step in range(200):
            bridge.step(step)
            time.sleep(0.005)
        responses = [mb.wait_response(i, 10) for i in ids]
        assert [r["status"] for r in responses] == ["applied"] * 3, responses
        assert bridge.hparams["lr"] == 0.5
        assert bridge.state()["metrics"]["sq"]["last_value"] == 199 ** 2
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("LOADED", loaded)
    """
)


def test_training_side_needs_no_tensorboard_starlette_uvicorn_or_torch(tmp_path):
    blocked = "tensorboard,starlette,uvicorn,torch,tensorflow,jax"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), blocked], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout

    from bridge_helpers import scalars

    assert scalars(tmp_path / "run", "hparams/lr")[-1][1] == 0.5
    assert len(scalars(tmp_path / "run", "bidviz/sq")) > 10

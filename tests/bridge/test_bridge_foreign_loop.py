"""Loops that are not ours: scikit-learn's own SGD training, and a user's own SummaryWriter, steered through
the documented API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from bridge_helpers import load_events, scalars

SKLEARN_LOOP = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from bidviz import Bridge

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    clf = SGDClassifier(learning_rate="constant", eta0=0.01, random_state=0)
    rng = np.random.default_rng(0)
    with Bridge(sys.argv[1], namespace={"clf": clf, "X_val": X[1500:], "y_val": y[1500:]}) as bridge:
        bridge.hparam("eta0", clf.eta0, min=1e-6, max=1.0, on_change=lambda v: setattr(clf, "eta0", v))
        print("READY", flush=True)
        step = 0
        while not bridge.should_stop:
            idx = rng.integers(0, 1500, 64)
            clf.partial_fit(X[idx], y[idx], classes=np.arange(10))
            bridge.step(step, clf=clf)
            step += 1
            time.sleep(0.01)
    print("STOPPED", step, flush=True)
    """
)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bidviz", *args], capture_output=True, text=True, timeout=timeout)


def test_scikit_learn_sgd_loop_is_steered_from_the_cli(tmp_path):
    run = str(tmp_path / "sk")
    proc = subprocess.Popen([sys.executable, "-c", SKLEARN_LOOP, run], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        r = cli("set", run, "eta0=0.05")
        assert r.returncode == 0, r.stderr
        assert "eta0 = 0.05 (was 0.01)" in r.stdout
        r = cli("eval", run, "clf.eta0")
        assert r.returncode == 0 and r.stdout.strip() == "0.05"
        r = cli("metric", "add", run, "val_acc", "clf.score(X_val, y_val)", "--every", "5")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(scalars(tmp_path / "sk", "bidviz/val_acc")) < 2:
            time.sleep(0.2)
        points = scalars(tmp_path / "sk", "bidviz/val_acc")
        assert len(points) >= 2 and all(0.0 <= v <= 1.0 for _, v in points)
        r = cli("eval", run, "clf.coef_.shape")
        assert r.stdout.strip() == "(10, 64)"
        r = cli("stop", run)
        assert r.returncode == 0
        out, _ = proc.communicate(timeout=30)
        assert "STOPPED" in out and proc.returncode == 0
    finally:
        proc.kill()
        proc.wait()
    assert scalars(tmp_path / "sk", "hparams/eta0")[-1][1] == pytest.approx(0.05)


@pytest.mark.parametrize("flavour", ["tensorboardX", "torch"])
def test_bridge_writes_through_the_users_writer_into_one_event_file(tmp_path, flavour):
    from bidviz import Bridge, protocol
    from bidviz.channel import Mailbox

    if flavour == "torch":
        from torch.utils.tensorboard import SummaryWriter
    else:
        from tensorboardX import SummaryWriter
    run = tmp_path / "run"
    writer = SummaryWriter(str(run), flush_secs=120)
    with Bridge(run, writer=writer) as bridge:
        bridge.hparam("lr", 0.1)
        mb = Mailbox(run)
        cid = mb.send(protocol.make_command("add_metric", {"name": "half", "code": "step / 2"}))
        for s in range(300):
            writer.add_scalar("user/loss", 1.0 / (s + 1), s)
            bridge.step(s)
            time.sleep(0.002)
        assert mb.read_response(cid)["status"] == "applied"
    writer.add_scalar("user/after", 1.0, 0)  # the user's writer stays usable: the bridge does not close it
    writer.close()
    files = [f for f in os.listdir(run) if "tfevents" in f]
    assert len(files) == 1, files
    tags = load_events(run).Tags()["scalars"]
    assert {"user/loss", "bidviz/half", "hparams/lr", "user/after"} <= set(tags)
    assert scalars(run, "bidviz/half")[-1] == (299, 149.5)

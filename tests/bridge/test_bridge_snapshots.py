"""The snapshot store on real torch objects: copies share nothing with the live objects (a restore can be done
twice), the budget evicts the oldest, a model over the budget is skipped with a note, and with spilling the
evicted and the oversized go to disk (0700) and come back from there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from bidviz.bridge.snapshots import SnapshotStore
from bidviz.errors import ProtocolError


def _training(width: int = 64) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    x = torch.randn(16, 8)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_a_restore_brings_back_weights_momentum_and_rng_and_can_be_done_twice() -> None:
    model, opt = _training()
    _train(model, opt, 3)
    store = SnapshotStore(lambda: {"model": model, "optimizer": opt})
    snap = store.take(3, "before", "a" * 32, {"lr": 0.1})
    assert snap is not None and snap.nbytes == 2 * sum(p.numel() * 4 for p in model.parameters())
    saved, draw = _weights(model), torch.rand(3)
    for _ in range(2):
        _train(model, opt, 5)  # changes weights and momentum in place
        torch.rand(7)
        store.restore(snap)
        assert all(torch.equal(a, b) for a, b in zip(saved, _weights(model), strict=True))
        assert torch.equal(torch.rand(3), draw)  # the RNG is where it was
    momentum = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    _train(model, opt, 1)
    store.restore(snap)
    assert not any(
        m.data_ptr() == opt.state[p]["momentum_buffer"].data_ptr()
        for m, p in zip(momentum, model.parameters(), strict=True)
    )
    assert store.find(before="a" * 32) is snap and store.find(to=3) is snap
    with pytest.raises(ProtocolError, match=r"no snapshot at or before step 2; snapshots kept: s1 at step 3"):
        store.find(to=2)


def test_the_budget_evicts_the_oldest_and_skips_what_never_fits() -> None:
    model, opt = _training()
    per = 2 * sum(p.numel() * 4 for p in model.parameters())
    store = SnapshotStore(lambda: {"model": model, "optimizer": opt}, max_bytes=3 * per, max_count=5)
    for step in range(6):
        _train(model, opt, 1)
        store.take(step, f"change {step}", None, {})
    kept = store.describe()["kept"]
    assert [k["id"] for k in kept] == ["s4", "s5", "s6"] and store.nbytes == 3 * per
    tiny = SnapshotStore(lambda: {"model": model, "optimizer": opt}, max_bytes=per - 1)
    assert tiny.take(0, "x", None, {}) is None and "skipped" in (tiny.note or "") and tiny.nbytes == 0


def test_spilled_snapshots_live_on_disk_and_restore_from_there(tmp_path: Path) -> None:
    model, opt = _training()
    per = 2 * sum(p.numel() * 4 for p in model.parameters())
    spill = tmp_path / ".bidviz" / "snapshots"
    store = SnapshotStore(lambda: {"model": model, "optimizer": opt}, max_bytes=per, max_count=2, spill_dir=spill)
    first = _weights(model)
    s1 = store.take(0, "first", None, {})
    _train(model, opt, 2)
    store.take(2, "second", None, {})  # evicts s1 to disk
    assert stat.S_IMODE(spill.stat().st_mode) == 0o700
    where = {k["id"]: k["where"] for k in store.describe()["kept"]}
    assert where == {"s1": "disk", "s2": "memory"} and len(list(spill.iterdir())) == 1
    store.restore(store.find(to=0))
    assert all(torch.equal(a, b) for a, b in zip(first, _weights(model), strict=True))
    assert s1 is not None and s1.states is None  # nothing of it left in memory

    (spill / "s9-999999999.pt").write_bytes(b"left by a process that ended")
    (spill / "notes.txt").write_text("not ours")
    big = SnapshotStore(lambda: {"model": model, "optimizer": opt}, max_bytes=10, spill_dir=spill)
    assert sorted(p.name for p in spill.iterdir()) == sorted(["notes.txt", f"s1-{os.getpid()}.pt"])
    snap = big.take(5, "too big for memory", None, {})
    assert snap is not None and snap.states is None and "written to disk" in (big.note or "")
    for _ in range(3):
        big.take(6, "more", None, {})
    assert len([k for k in big.describe()["kept"] if k["where"] == "disk"]) <= big.max_count

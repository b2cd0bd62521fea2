"""Hyperparameters: registration, validation, torch optimizers and schedulers, and the series they leave."""

from __future__ import annotations

import pytest
import torch
from bridge_helpers import load_events, scalars

from bidviz import Bridge, protocol
from bidviz.channel import Mailbox


def send(run_dir, kind, **args):
    mb = Mailbox(run_dir)
    return mb, mb.send(protocol.make_command(kind, args))


def step_until_answered(bridge, mb, cid, start=0, limit=2000):
    for s in range(start, start + limit):
        bridge.step(s)
        resp = mb.read_response(cid)
        if resp is not None:
            return resp, s
        import time

        time.sleep(0.002)
    raise AssertionError("no response")


def model_and_opt(kind="sgd"):
    model = torch.nn.Linear(3, 1)
    if kind == "adam":
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_bind_optimizer_registers_every_numeric_group_value(tmp_path):
    _, opt = model_and_opt("adam")
    with Bridge(tmp_path / "run") as b:
        names = b.bind_optimizer(opt)
        assert {"lr", "betas", "eps", "weight_decay"} <= set(names)
        assert "params" not in names and "amsgrad" not in names
        assert b.hparams["betas"] == (0.9, 0.999)
        mb, cid = send(tmp_path / "run", "set_hparam", name="betas", value=[0.8, 0.99])
        resp, _ = step_until_answered(b, mb, cid)
        assert resp["status"] == "applied" and resp["result"] == {
            "name": "betas",
            "value": [0.8, 0.99],
            "old": [0.9, 0.999],
        }
        assert opt.param_groups[0]["betas"] == (0.8, 0.99)
        mb, cid = send(tmp_path / "run", "set_hparam", name="betas", value=[0.8, 1.5])
        resp, _ = step_until_answered(b, mb, cid, start=100)
        assert resp["status"] == "rejected" and resp["error"]["type"] == "OutOfBounds"


def test_lr_sets_every_group_and_lr_at_i_one_group(tmp_path):
    a, b_ = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b_.parameters(), "lr": 0.5}], lr=0.1)
    with Bridge(tmp_path / "run") as b:
        names = b.bind_optimizer(opt)
        assert {"lr", "lr@0", "lr@1"} <= set(names)
        mb, cid = send(tmp_path / "run", "set_hparam", name="lr@1", value=0.05)
        step_until_answered(b, mb, cid)
        assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
        mb, cid = send(tmp_path / "run", "set_hparam", name="lr", value=0.01)
        step_until_answered(b, mb, cid, start=100)
        assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


def test_bind_optimizer_late_still_validates_queued_commands_at_apply(tmp_path):
    _, opt = model_and_opt()
    with Bridge(tmp_path / "run") as b:
        b.step(0)
        mb, cid = send(tmp_path / "run", "set_hparam", name="lr", value=0.3)
        resp, s = step_until_answered(b, mb, cid, start=1)
        assert resp["status"] == "rejected" and "no hyperparameter 'lr'" in resp["error"]["message"]
        b.bind_optimizer(opt)  # as Lightning does, inside its own run()
        mb, cid = send(tmp_path / "run", "set_hparam", name="lr", value=0.3)
        resp, _ = step_until_answered(b, mb, cid, start=s + 1)
        assert resp["status"] == "applied" and opt.param_groups[0]["lr"] == 0.3


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9**s),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50),
        lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=100),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, 5), torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0)],
            milestones=[5],
        ),
    ],
    ids=["lambda", "step", "cosine", "exponential", "onecycle", "sequential"],
)
def test_a_set_lr_survives_the_schedulers_next_step(tmp_path, make_scheduler):
    """Run two identical optimizers side by side; one gets lr scaled by 1/10 through the bridge at step 10.
    From then on its lr must stay 1/10 of the other's as the schedule goes on, rather than snap back."""
    model = torch.nn.Linear(3, 1)
    ref_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_sched, sched = make_scheduler(ref_opt), make_scheduler(opt)
    with Bridge(tmp_path / "run") as b:
        b.bind_optimizer(opt, sched)
        for s in range(10):
            ref_opt.step(), opt.step(), ref_sched.step(), sched.step()
            b.step(s)
        mb, cid = send(tmp_path / "run", "set_hparam", name="lr", value=opt.param_groups[0]["lr"] / 10)
        while mb.read_response(cid) is None:
            b.step(9)
        for s in range(10, 40):
            ref_opt.step(), opt.step(), ref_sched.step(), sched.step()
            b.step(s)
            assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"] / 10, rel=1e-6), s


def test_custom_hparams_types_bounds_choices_and_on_change(tmp_path):
    seen = []
    with Bridge(tmp_path / "run") as b:
        assert b.hparam("dropout", 0.1, min=0.0, max=0.9, on_change=seen.append) == 0.1
        b.hparam("layers", 2, min=1, max=8)
        b.hparam("augment", True)
        b.hparam("opt", "sgd", choices=["sgd", "adam"])
        with pytest.raises(protocol.ProtocolError, match="between 0.0 and 0.9"):
            b.hparam("bad", 2.0, min=0.0, max=0.9)
        cases = [
            ("dropout", 0.5, "applied"),
            ("layers", 3.0, "applied"),  # an integral float is an int
            ("layers", 3.5, "rejected"),
            ("augment", 0, "rejected"),
            ("augment", False, "applied"),
            ("opt", "adam", "applied"),
            ("opt", "rmsprop", "rejected"),
        ]
        s = 0
        for name, value, status in cases:
            mb, cid = send(tmp_path / "run", "set_hparam", name=name, value=value)
            resp, s = step_until_answered(b, mb, cid, start=s + 1)
            assert resp["status"] == status, (name, value, resp)
        assert dict(b.hparams) == {"dropout": 0.5, "layers": 3, "augment": False, "opt": "adam"}
        assert seen == [0.5]
        with pytest.raises(KeyError, match="registered: dropout, layers, augment, opt"):
            b.hparams["nope"]


def test_on_change_that_raises_fails_the_command_and_keeps_the_old_value(tmp_path):
    def refuse(value):
        raise RuntimeError(f"cannot use {value}")

    with Bridge(tmp_path / "run") as b:
        b.hparam("width", 1.0, on_change=refuse)
        mb, cid = send(tmp_path / "run", "set_hparam", name="width", value=2.0)
        resp, _ = step_until_answered(b, mb, cid)
        assert resp["status"] == "failed" and "cannot use 2.0" in resp["error"]["message"]
        assert "RuntimeError" in resp["error"]["traceback"]
        assert b.hparams["width"] == 1.0


def test_changes_are_scalar_steps_and_start_values_an_hparams_session(tmp_path):
    _, opt = model_and_opt()
    run = tmp_path / "run"
    with Bridge(run) as b:
        b.bind_optimizer(opt)
        b.hparam("dropout", 0.1)
        for s in range(5):
            b.step(s)
        mb, cid = send(run, "set_hparam", name="lr", value=0.02)
        resp, s = step_until_answered(b, mb, cid, start=5)
        applied_step = resp["step"]
        for k in range(s + 1, s + 5):
            b.step(k)
    lr = scalars(run, "hparams/lr")
    assert lr[0] == (0, pytest.approx(0.1)) and lr[-1] == (applied_step, pytest.approx(0.02))
    acc = load_events(run)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["lr"].number_value == pytest.approx(0.1) and values["dropout"].number_value == pytest.approx(0.1)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "hparams/lr" in [m.name.tag for m in experiment.metric_infos]


def test_event_file_exists_when_the_bridge_starts(tmp_path):
    with Bridge(tmp_path / "run"):
        files = [p.name for p in (tmp_path / "run").iterdir() if "tfevents" in p.name]
        assert len(files) == 1


def test_optimizer_bound_after_the_first_step_still_gets_an_hparams_session(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, opt = model_and_opt()
    run = tmp_path / "run"
    with Bridge(run) as b:
        b.step(0)
        b.step(1)
        b.bind_optimizer(opt)  # as trainers that build the optimizer inside their own run() do
        b.step(2)
    content = load_events(run).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert set(start.session_start_info.hparams) == {"lr", "momentum", "dampening", "weight_decay"}
    ((first_step, value),) = scalars(run, "hparams/lr")  # the curve starts where lr was registered
    assert first_step <= 2 and value == pytest.approx(0.1)

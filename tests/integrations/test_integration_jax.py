"""JAX/optax: examples/jax_optax.py trains in a subprocess with `bind_optax`; the CLI drives it. A change of a
hyperparameter must reach the jitted step without recompiling it."""

from __future__ import annotations

import importlib.util

import pytest
from integration_checks import add_metric, eval_value, pause_resume, scalars, set_hparam, stop, wait_metric_values

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("jax") and importlib.util.find_spec("optax")), reason="jax/optax not installed"
)

COMPILES = "traces[0], train_step._cache_size()"


def test_optax_binding_end_to_end(start_training) -> None:  # type: ignore[no-untyped-def]
    training = start_training("jax_optax.py", "jax", "--steps", "0", "--delay", "0.01", "--quiet")
    run = training.run_dir
    training.wait_live()

    assert eval_value(run, COMPILES) == (1, 1)
    assert eval_value(run, "sorted(bridge.hparams), type(opt_state).__name__") == (
        ["lr", "momentum"],
        "InjectStatefulHyperparamsState",
    )

    response = set_hparam(run, "lr", 0.5)
    set_hparam(run, "momentum", 0.25)
    training.wait_steps(5)
    # The values went through the jitted update (optax returns the hyperparams it used) and nothing recompiled.
    used = eval_value(run, "float(opt_state.hyperparams['learning_rate']), float(opt_state.hyperparams['momentum'])")
    assert used == (0.5, 0.25)
    assert eval_value(run, COMPILES) == (1, 1)
    assert eval_value(run, "hparams['lr'], hparams['momentum']") == (0.5, 0.25)

    add_metric(run, "grad_norm", "optax.global_norm(grads)")
    add_metric(run, "loss", "loss")
    add_metric(run, "w1_mean_abs", "abs(host(params['w1'])).mean()")
    add_metric(run, "opt_count", "opt_state.count")
    for name in ("grad_norm", "loss", "w1_mean_abs", "opt_count"):
        wait_metric_values(training, name)
    assert eval_value(run, COMPILES) == (1, 1)

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command); train_step traced 1 time(s)" in out, out

    series = scalars(run)
    for tag in ("bidviz/grad_norm", "bidviz/loss", "bidviz/w1_mean_abs", "bidviz/opt_count", "hparams/lr"):
        assert series.get(tag), f"{tag} missing; tags: {sorted(series)}"
    assert series["hparams/lr"][-1][2] == pytest.approx(0.5)
    assert series["hparams/lr"][-1][0] == response["step"]
    counts = [(s, v) for s, _, v in series["bidviz/opt_count"]]
    assert all(v == s + 1 for s, v in counts), counts[:5]  # optax's own step counter, one update per step


def test_optax_scheduled_hparam_is_refused_and_a_chained_factor_is_tunable(start_training, cli) -> None:  # type: ignore[no-untyped-def]
    training = start_training("jax_optax.py", "jax_sched", "--steps", "0", "--delay", "0.01", "--quiet", "--schedule")
    run = training.run_dir
    training.wait_live()
    assert eval_value(run, "sorted(bridge.hparams)") == ["lr", "momentum", "step_size"]

    out = cli("set", run, "lr=0.5")
    assert out.returncode == 1, out
    assert "NotSettable" in out.stderr and "schedule" in out.stderr and "step_size" in out.stderr, out.stderr
    training.wait_steps(3)
    lr = training.state()["hparams"]["lr"]["value"]
    assert 0 < lr < 0.05  # the schedule's current value, read from the state: it decays
    set_hparam(run, "step_size", 2.0)
    training.wait_steps(3)
    assert eval_value(run, "float(opt_state[1].hyperparams['step_size'])") == 2.0
    assert eval_value(run, COMPILES) == (1, 1)
    stop(training)

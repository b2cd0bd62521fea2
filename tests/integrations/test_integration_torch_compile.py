"""torch.compile: examples/torch_compile.py trains a compiled model in a subprocess; the CLI steers it (lr under a
scheduler, a metric reading the weights, evals) and dynamo's own counter of compiled graphs shows what recompiles.

The backend is aot_eager: dynamo captures the same graphs and guards as with inductor (what decides a recompilation),
without inductor's C++ compile, which took 90 s cold on this CI's two cores (README: Frameworks)."""

from __future__ import annotations

import pytest
from integration_checks import (
    add_metric,
    cli_ok,
    eval_value,
    event_files,
    pause_resume,
    scalars,
    set_hparam,
    stop,
    wait_metric_values,
)

DECAY = 0.999  # the example's LambdaLR: lr = base * DECAY**step
TIMED_EVAL = """import time
t = time.perf_counter()
acc = float((model(x_val).argmax(1) == y_val).float().mean())
seconds = time.perf_counter() - t
eager = float((net(x_val).argmax(1) == y_val).float().mean())"""  # names an eval defines are visible to the next one


def test_compiled_model_steered_without_recompiling(start_training) -> None:  # type: ignore[no-untyped-def]
    args = ["--steps", "0", "--delay", "0.01", "--backend", "aot_eager", "--quiet"]
    training = start_training("torch_compile.py", "compiled", *args)
    run = training.run_dir
    training.wait_live()
    training.wait_steps(3)
    assert eval_value(run, "type(model).__name__") == "OptimizedModule"
    graphs = eval_value(run, "compiles()")
    assert graphs >= 1

    # A metric reading the weights, and a new lr under the scheduler: nothing recompiles.
    add_metric(run, "weight_norm", "model.fc1.weight.norm()")
    wait_metric_values(training, "weight_norm")
    set_at = set_hparam(run, "lr", 0.01)["step"]
    set_hparam(run, "momentum", 0.5)
    training.wait_steps(10)
    step, lr, momentum, now = eval_value(
        run, "step, optimizer.param_groups[0]['lr'], optimizer.param_groups[0]['momentum'], compiles()"
    )
    assert lr == pytest.approx(0.01 * DECAY ** (step - set_at), rel=1e-9), (step, set_at, lr)
    assert momentum == 0.5
    assert now == graphs, "a set lr, momentum or a weight-reading metric recompiled the model"

    # An eval through the eager module compiles nothing; one through the compiled model on the validation set (another
    # batch size) compiles once, and the same eval again, or going back to training, reuses what is compiled.
    assert eval_value(run, "float((net(x_val).argmax(1) == y_val).float().mean()), compiles()")[1] == graphs
    cli_ok("eval", run, TIMED_EVAL)
    accuracy, eager, first_seconds, after_eval = eval_value(run, "acc, eager, seconds, compiles()")
    assert accuracy == pytest.approx(eager, abs=2 / 297), (accuracy, eager)  # the same weights, compiled or not
    assert after_eval == graphs + 1, (graphs, after_eval)
    cli_ok("eval", run, TIMED_EVAL)
    _, _, second_seconds, after_second = eval_value(run, "acc, eager, seconds, compiles()")
    assert after_second == after_eval, "the same eval of the compiled model compiled again"
    training.wait_steps(10)
    assert eval_value(run, "compiles()") == after_eval, "training recompiled after an eval of the compiled model"
    print(f"compiled eval: first {first_seconds:.3f} s (compiles), then {second_seconds:.4f} s")

    pause_resume(training)
    out = stop(training)
    assert "(stopped by command)" in out and f"graphs compiled: {after_eval}" in out, out

    assert len(event_files(run)) == 1, list(run.iterdir())
    series = scalars(run)
    norms = [v for _, _, v in series["bidviz/weight_norm"]]
    assert len(norms) >= 10 and len(set(norms)) > 1, norms  # live weights, trained by the compiled model
    assert [v for _, _, v in series["hparams/lr"]][-1] == pytest.approx(0.01)
    assert series.get("train/loss"), sorted(series)

"""A small JAX network on scikit-learn's handwritten digits, optimized with optax, steerable live with BIDViz.

    python examples/jax_optax.py --logdir runs          # trains runs/jax (or --steps 0: until stopped)
    bidviz set runs/jax lr=0.01 momentum=0.5            # from another terminal: no recompilation

The optimizer is built with `optax.inject_hyperparams`, so its hyperparameters are data in `opt_state` and a
change reaches the jitted step as a new value of the same shape and dtype: `traces` counts how often JAX traced
`train_step` (1: it never recompiles). Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from bidviz import Bridge
from bidviz.integrations.jax import bind_optax

BATCH = 64
N_TRAIN = 1500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="jax", help="run name inside the log directory (default: jax)")
    p.add_argument("--steps", type=int, default=1000, help="steps to train; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", action="store_true", help="decay lr with an optax schedule, plus a tunable factor")
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, 64)) * 0.1,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 10)) * 0.1,
        "b2": jnp.zeros(10),
    }


def predict(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y).mean()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, dtype=jnp.float32)
    y = jnp.asarray(digits.target, dtype=jnp.int32)
    x_train, y_train, x_val, y_val = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]

    if args.schedule:
        # A scheduled learning rate is recomputed by optax at every update, so it is not settable; a tunable
        # factor chained after it (`step_size`) is.
        decay = optax.exponential_decay(args.lr, transition_steps=1, decay_rate=0.999)
        optimizer = optax.chain(
            optax.inject_hyperparams(optax.sgd)(learning_rate=decay, momentum=0.9),
            optax.inject_hyperparams(optax.scale)(step_size=1.0),
        )
    else:
        optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=args.lr, momentum=0.9)
    params = init_params(jax.random.PRNGKey(0))
    opt_state = optimizer.init(params)
    traces = [0]

    @jax.jit
    def train_step(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array) -> Any:
        traces[0] += 1  # runs only while JAX traces (compiles) the function
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    run_dir = os.path.join(args.logdir, args.run)
    namespace = {"predict": predict, "x_val": x_val, "y_val": y_val, "traces": traces, "train_step": train_step}
    namespace["optax"] = optax
    with Bridge(run_dir, namespace=namespace) as bridge:
        hp = bind_optax(bridge, opt_state)
        if not args.quiet:
            print_help(run_dir)
        rng = np.random.default_rng(1)
        step = 0
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            idx = rng.integers(0, N_TRAIN, BATCH)
            params, opt_state, loss, grads = train_step(params, opt_state, x_train[idx], y_train[idx])
            bridge.namespace["params"] = params  # also for `eval`, which may run while no step is under way
            opt_state = hp.step(step, opt_state, params=params, grads=grads, loss=loss)
            step += 1
            if args.delay > 0:
                time.sleep(args.delay)
        stopped = " (stopped by command)" if bridge.should_stop else ""
    print(f"training ended at step {step}{stopped}; train_step traced {traces[0]} time(s)", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge is live on {run_dir}. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 momentum=0.5
  bidviz metric add {run} loss "loss"
  bidviz metric add {run} grad_norm "optax.global_norm(grads)"
  bidviz metric add {run} val_acc "(predict(params, x_val).argmax(1) == y_val).mean()" --every 50
  bidviz metric add {run} w1 "params['w1']" --kind histogram --every 20
  bidviz eval {run} "traces[0], train_step._cache_size(), host(opt_state.hyperparams)"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

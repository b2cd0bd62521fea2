"""JAX + optax on the CPU, logged with bidviz's EventWriter: no TensorFlow, no torch, no tensorboard needed.
With `--writer flax` the same series go through Flax's `flax.metrics.tensorboard.SummaryWriter` (TensorFlow's
`tf.summary` underneath) instead, as many JAX projects log; both runs read back the same way.

    python examples/jax_logging.py                       # a few seconds; the run goes to runs/jax-<time>
    python examples/jax_logging.py --steps 5000 --logdir /tmp/runs
    python examples/jax_logging.py --writer flax         # needs flax and tensorflow
    tensorboard --logdir runs                            # then open http://localhost:6006

A small MLP learns y = sin(3x) + noise. Every step writes the loss and the learning rate (a scalar each, through
the writer's fast path); every 50 steps the parameter norm, a histogram of the first layer's weights and the
evaluation loss.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402 -- after JAX_PLATFORMS
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bidviz.writers import EventWriter  # noqa: E402


class FlaxWriter:
    """The calls this example makes, through `flax.metrics.tensorboard.SummaryWriter`."""

    def __init__(self, run_dir: str) -> None:
        from flax.metrics.tensorboard import SummaryWriter  # imports TensorFlow

        self.writer = SummaryWriter(run_dir, auto_flush=False)  # auto_flush would flush after every value

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.scalar(tag, value, step)

    def add_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.writer.histogram(tag, values, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.writer.text(tag, text, step)

    def add_hparams(self, hparams: dict[str, object], metrics: list[str]) -> None:
        self.writer.hparams(hparams)  # Flax logs the values only; TensorBoard finds the metrics by itself

    def __enter__(self) -> FlaxWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


def init_params(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in), jnp.zeros(fan_out)))
    return params


def predict(params: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def loss_fn(params: list[tuple[jax.Array, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((predict(params, x) - y) ** 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default="runs", help="the log directory (TensorBoard's --logdir)")
    parser.add_argument("--run", default=None, help="the run's name (default jax-<time>)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--writer", choices=["bidviz", "flax"], default="bidviz", help="bidviz's EventWriter or Flax's")
    opts = parser.parse_args(argv)

    run_dir = os.path.join(opts.logdir, opts.run or time.strftime("jax-%Y%m%d-%H%M%S"))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(512, 1)).astype(np.float32)
    y = (np.sin(3 * x) + 0.05 * rng.normal(size=x.shape)).astype(np.float32)
    x_eval = np.linspace(-1, 1, 128, dtype=np.float32)[:, None]
    y_eval = np.sin(3 * x_eval)

    schedule = optax.cosine_decay_schedule(opts.lr, decay_steps=opts.steps, alpha=0.05)
    optimizer = optax.adam(schedule)
    params = init_params(jax.random.PRNGKey(0), [1, 32, 32, 1])
    state = optimizer.init(params)

    @jax.jit
    def train_step(params, state, x, y):  # type: ignore[no-untyped-def]
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, optax.global_norm(grads)

    evaluate = jax.jit(loss_fn)
    start = time.perf_counter()
    with EventWriter(run_dir) if opts.writer == "bidviz" else FlaxWriter(run_dir) as writer:
        writer.add_hparams(
            {"lr": opts.lr, "optimizer": "adam", "schedule": "cosine", "hidden": 32, "steps": opts.steps},
            ["train/loss", "eval/loss"],
        )
        for step in range(opts.steps):
            params, state, loss, grad_norm = train_step(params, state, x, y)
            writer.add_scalar("train/loss", float(loss), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("hparams/lr", float(schedule(step)), step)
            if step % 50 == 0 or step == opts.steps - 1:
                writer.add_scalar("eval/loss", float(evaluate(params, x_eval, y_eval)), step)
                writer.add_scalar("params/global_norm", float(optax.global_norm(params)), step)
                writer.add_histogram("params/layer0/weights", np.asarray(params[0][0]), step)
        final = float(evaluate(params, x_eval, y_eval))
        writer.add_text("summary", f"final eval loss **{final:.4f}** after {opts.steps} steps", opts.steps)
    seconds = time.perf_counter() - start
    print(f"{opts.steps} steps in {seconds:.1f} s, final eval loss {final:.4f}")
    print(f"run: {os.path.abspath(run_dir)}")
    print(f"view it: tensorboard --logdir {os.path.abspath(opts.logdir)}   (then open http://localhost:6006)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

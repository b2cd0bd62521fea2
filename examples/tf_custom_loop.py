"""A plain TensorFlow training loop (`tf.GradientTape`, a `tf.keras` optimizer, a `tf.function` step) on
scikit-learn's handwritten digits, steerable live with BIDViz; every series goes into the loop's own
`tf.summary` event file.

    python examples/tf_custom_loop.py --logdir runs      # trains runs/tf (or --steps 0: until stopped)
    bidviz set runs/tf lr=0.01 l2=0.001                  # from another terminal

Hyperparameters live in `tf.Variable`s (the optimizer's learning rate is one; `l2` is ours), bound with
`bridge.bind_hparam`: a change is an `assign`, so the compiled step never retraces. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # tf.keras is Keras 3 on the TensorFlow backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from bidviz import Bridge  # noqa: E402

BATCH = 64
N_TRAIN = 1500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="tf", help="run name inside the log directory (default: tf)")
    p.add_argument("--steps", type=int, default=600, help="steps to train; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tf.keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_val, y_val = tf.constant(x[N_TRAIN:]), tf.constant(y[N_TRAIN:])
    batches = tf.data.Dataset.from_tensor_slices((x[:N_TRAIN], y[:N_TRAIN])).shuffle(N_TRAIN, seed=0).batch(BATCH)

    model = tf.keras.Sequential(
        [tf.keras.Input((64,)), tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(10)]
    )
    optimizer = tf.keras.optimizers.SGD(learning_rate=args.lr)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    l2 = tf.Variable(0.0, trainable=False, name="l2")  # read inside the compiled step: assign, never retrace

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            loss += l2 * tf.add_n([tf.reduce_sum(w**2) for w in model.trainable_weights])
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return loss

    run_dir = os.path.join(args.logdir, args.run)
    writer = tf.summary.create_file_writer(run_dir)  # the loop's own writer; the bridge writes through it too
    if not args.quiet:
        print_help(run_dir)
    ns = {"model": model, "optimizer": optimizer, "tf": tf, "keras": tf.keras, "x_val": x_val, "y_val": y_val, "l2": l2}
    step = 0
    with Bridge(run_dir, writer=writer, namespace=ns) as bridge:
        bridge.bind_hparam(
            "lr", lambda: float(optimizer.learning_rate), optimizer.learning_rate.assign, type="float", min=0.0
        )
        bridge.bind_hparam("l2", lambda: float(l2), l2.assign, type="float", min=0.0, max=1.0)
        while not bridge.should_stop and (args.steps <= 0 or step < args.steps):
            for xb, yb in batches:
                loss = train_step(xb, yb)
                step += 1
                with writer.as_default():
                    tf.summary.scalar("train/loss", loss, step=step)
                bridge.step(step, loss=loss, batch=(xb, yb))
                if args.delay > 0:
                    time.sleep(args.delay)
                if bridge.should_stop or step == args.steps:
                    break
    writer.close()
    stopped = " (stopped by command)" if bridge.should_stop else ""
    accuracy = float(np.mean(np.argmax(model(x_val), 1) == y[N_TRAIN:]))
    print(f"training ended at step {step}{stopped}; validation accuracy {accuracy:.3f}", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge live on {run_dir} once training starts. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 l2=0.001
  bidviz metric add {run} kernel_norm "tf.norm(model.layers[0].kernel)"
  bidviz metric add {run} val_acc "np.mean(np.argmax(model(x_val), 1) == y_val.numpy())" --every 50
  bidviz eval {run} "float(optimizer.learning_rate), int(optimizer.iterations)"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

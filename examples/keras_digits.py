"""Keras 3 on scikit-learn's handwritten digits, steerable live with BIDViz (any backend: KERAS_BACKEND=torch, jax or
tensorflow).

    KERAS_BACKEND=torch python examples/keras_digits.py --logdir runs     # trains runs/keras (or --steps 0: forever)
    bidviz set runs/keras lr=0.01                                          # from another terminal

With --schedule the optimizer gets an ExponentialDecay schedule; `lr` stays settable (BIDViz scales the schedule).
With --tensorboard Keras's own `keras.callbacks.TensorBoard` logs too (into runs/keras/train), and the bridge joins
that run: Keras's series (`batch_loss`, `epoch_learning_rate`...) and BIDViz's side by side.
Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; an explicit KERAS_BACKEND wins

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from bidviz.integrations.keras import BIDVizCallback  # noqa: E402

BATCH = 64
N_TRAIN = 1500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="keras", help="run name inside the log directory (default: keras)")
    p.add_argument("--steps", type=int, default=600, help="steps to train (whole epochs); 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", action="store_true", help="decay lr with keras' ExponentialDecay (still settable)")
    p.add_argument("--steps-per-execution", type=int, default=1, help="train steps per compiled call (Keras' setting)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log with keras.callbacks.TensorBoard(<logdir>/<run>); the bridge then joins its run <run>/train",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


class Delay(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        time.sleep(self.seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, y_train, x_val, y_val = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dropout(0.1, name="drop"),
            keras.layers.Dense(10, name="out"),
        ]
    )
    lr: Any = args.lr
    if args.schedule:
        lr = keras.optimizers.schedules.ExponentialDecay(args.lr, decay_steps=1, decay_rate=0.999)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=args.steps_per_execution,
    )
    run_dir = os.path.join(args.logdir, args.run)
    if args.tensorboard:  # Keras writes its training series to <log_dir>/train: the bridge writes into that run
        run_dir = os.path.join(run_dir, "train")

    def set_dropout(p: float) -> None:
        model.get_layer("drop").rate = p

    callbacks: list[Any] = [
        BIDVizCallback(
            run_dir,
            namespace={"x_val": x_val, "y_val": y_val, "np": np},
            hparams={"dropout": {"value": 0.1, "min": 0.0, "max": 0.9, "on_change": set_dropout}},
        )
    ]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.dirname(run_dir), update_freq="batch"))
    if args.delay > 0:
        callbacks.append(Delay(args.delay))
    steps_per_epoch = math.ceil(N_TRAIN / BATCH)
    epochs = math.ceil(args.steps / steps_per_epoch) if args.steps > 0 else 1_000_000
    if not args.quiet:
        print_help(run_dir)
    history = model.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0)
    stopped = " (stopped by command)" if model.stop_training else ""
    done = len(history.epoch)
    print(f"training ended after {done} epochs{stopped}; last loss {history.history['loss'][-1]:.4f}", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge will be live on {run_dir} once fit() starts ({keras.backend.backend()} backend). Try:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.01 momentum=0.5 dropout=0.3
  bidviz metric add {run} kernel_norm "ops.norm(model.get_layer('hidden').kernel)"
  bidviz metric add {run} val_acc "np.mean(np.argmax(model.predict(x_val, verbose=0), 1) == y_val)" --every 50
  bidviz metric add {run} loss "logs['loss']"
  bidviz eval {run} "int(optimizer.iterations), float(optimizer.learning_rate)"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}                       # sets model.stop_training: Keras ends the fit its own way
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""A tiny GPT-2 (random weights, built from a config) learning synthetic counting sequences with the Hugging Face
`Trainer`, steerable live with BIDViz.

    python examples/hf_trainer_tiny.py --logdir runs          # trains runs/hf (or --steps 0: until stopped)
    bidviz set runs/hf lr=0.001                               # from another terminal
    torchrun --nproc-per-node 2 examples/hf_trainer_tiny.py   # DDP on two CPU processes, a bridge on each

The bridge writes through the Trainer's TensorBoard writer, so its series and the Trainer's own (`train/loss`,
`train/learning_rate`) share one run. Nothing is downloaded (HF_HUB_OFFLINE=1 is set here).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing below needs the Hub; make sure nothing tries it
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from bidviz.integrations.hf import BIDVizCallback  # noqa: E402

VOCAB = 32
LENGTH = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: runs)")
    p.add_argument("--run", default="hf", help="run name inside the log directory (default: hf)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps; 0 trains until stopped")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep per step, so a person can follow")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--quiet", action="store_true", help="do not print the commands to try")
    return p.parse_args(argv)


class Counting(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Sequences start, start+k, start+2k, ... (mod VOCAB): learnable from the first two tokens."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Delay(TrainerCallback):  # type: ignore[misc]
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    run_dir = os.path.join(args.logdir, args.run)
    os.environ["TENSORBOARD_LOGGING_DIR"] = run_dir  # where the Trainer's TensorBoard callback writes
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    training_args = TrainingArguments(
        output_dir=os.path.join(args.logdir, f".{args.run}-trainer"),
        max_steps=args.steps if args.steps > 0 else 100_000,
        per_device_train_batch_size=32,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        logging_steps=5,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under torchrun: every parameter gets a gradient
        seed=0,
    )
    callbacks: list[Any] = [Delay(args.delay)] if args.delay > 0 else []
    trainer = Trainer(model=model, args=training_args, train_dataset=Counting(4096), callbacks=callbacks)
    # Given the trainer, the bridge finds the Trainer's TensorBoard writer among its callbacks and writes through it.
    trainer.add_callback(BIDVizCallback(trainer=trainer))
    if not args.quiet and training_args.process_index == 0:
        print_help(run_dir)
    result = trainer.train()
    stopped = " (stopped by command)" if trainer.state.global_step < training_args.max_steps else ""
    print(f"training ended at step {result.global_step}{stopped}; train loss {result.training_loss:.4f}", flush=True)
    return 0


def print_help(run_dir: str) -> None:
    run = shlex.quote(run_dir)
    print(
        f"""BIDViz bridge will be live on {run_dir} once training starts. Try, from another terminal:

  bidviz status {shlex.quote(os.path.dirname(run_dir) or ".")}
  bidviz set {run} lr=0.001 weight_decay=0.01
  bidviz metric add {run} wte_norm "model.transformer.wte.weight.norm()"
  bidviz metric add {run} logged_loss "logs.get('loss')"
  bidviz metric add {run} epoch "trainer_state.epoch"
  bidviz eval {run} "state.global_step, scheduler.get_last_lr()"
  bidviz eval {run} "model.config.n_layer, sum(p.numel() for p in model.parameters())"
  bidviz pause {run};  bidviz resume {run}
  bidviz stop {run}                       # sets control.should_training_stop: the Trainer ends its own way
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

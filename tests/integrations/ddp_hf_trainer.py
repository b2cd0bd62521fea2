"""A Hugging Face `Trainer` job on the CPU with BIDVizCallback, for the distributed integration tests; one process a
rank, launched by torchrun:

    python -m torch.distributed.run --nproc-per-node 2 ddp_hf_trainer.py LOGDIR [--delay SECONDS] [--max-steps N]

A tiny GPT-2 (random weights, from a config) learns synthetic counting sequences, as in examples/hf_trainer_tiny.py;
nothing is downloaded. The Trainer (through Accelerate) joins the ranks with gloo and wraps the model in DDP; the
bridge writes through the Trainer's TensorBoard writer into LOGDIR/run. Each rank appends one JSON line a step to
LOGDIR/rank<K>.jsonl (the global step, its optimizer's lr, control.should_training_stop) after the bridge has
stepped, and {"exit": 0, "step": S} when `train` returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from bidviz.integrations.hf import BIDVizCallback  # noqa: E402

VOCAB, LENGTH = 32, 16


class Counting(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        start, stride = torch.randint(0, VOCAB, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class RankLog(TrainerCallback):  # type: ignore[misc]
    """One line a step, after BIDVizCallback (added after it, so called after it)."""

    def __init__(self, path: Path, delay: float) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115
        self.file.write(json.dumps({"pid": os.getpid()}) + "\n")
        self.delay = delay

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        lr = optimizer.param_groups[0]["lr"]
        stop = control.should_training_stop
        self.file.write(json.dumps({"step": state.global_step, "lr": lr, "stop": stop}) + "\n")
        time.sleep(self.delay)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("logdir", type=Path)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=100_000)
    a = p.parse_args()
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(a.logdir / "run")  # where the Trainer's TensorBoard callback writes
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=1, n_head=2, bos_token_id=0)
    config.eos_token_id = 0
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=str(a.logdir / "trainer"),
        max_steps=a.max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Counting(4096))
    trainer.add_callback(BIDVizCallback(trainer=trainer, dist_timeout=60))
    log = RankLog(a.logdir / f"rank{args.process_index}.jsonl", a.delay)
    trainer.add_callback(log)
    trainer.train()
    log.file.write(json.dumps({"exit": 0, "step": trainer.state.global_step}) + "\n")
    log.file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

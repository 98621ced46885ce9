"""Trainer overhead: tokens/s of our Trainer (metrics stream, flushes, schedule, clipping) against a
plain PyTorch loop over the same model, optimizer and batches, side by side in one process.

    python benchmarks/bench_train.py                       # 1M and 10M on CPU, writes benchmarks/results/train.md
    python benchmarks/bench_train.py --sizes 1M --steps 20 --repeats 1

Both loops time the same window: from the start of optimizer step ``warmup`` to the start of the
last step, so setup, the first steps (allocator warm-up) and the final checkpoint are left out of
both. Runs alternate (plain, trainer, plain, trainer, ...) and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling_train import config as config_mod  # noqa: E402
from scaling_train.data import batch_indices, prepare  # noqa: E402
from scaling_train.models import GPT  # noqa: E402
from scaling_train.train import RunConfig, Trainer, lr_at  # noqa: E402
from scaling_train.train.trainer import make_optimizer  # noqa: E402


def make_cfg(size: str, steps: int, run_dir: str) -> RunConfig:
    return config_mod.load(
        RunConfig,
        None,
        [
            f"run_dir={run_dir}",
            f"model.size={size}",
            "model.seq_len=128",
            "data.vocab_size=4096",
            "data.max_bytes=4000000",
            "train.batch_size=16",
            f"train.max_steps={steps}",
            "train.log_every=10",
            "train.eval_every=0",
            "train.eval_batches=0",
            "train.ckpt_every=0",
            "train.progress=false",
            "device=cpu",
        ],
    )


class StepClock:
    """Trainer callback: wall time at the start of steps ``first`` and ``last``."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.t = first, last, {}

    def on_before_step(self, trainer, step: int) -> None:
        # on_before_step runs after backward of `step`; the window [first, last) has the same
        # number of complete steps as the plain loop's
        if step in (self.first, self.last):
            self.t[step] = time.perf_counter()


def run_trainer(size: str, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = make_cfg(size, steps, d + "/run")
        clock = StepClock(warmup, steps - 1)
        Trainer(cfg, callbacks=[clock], log=lambda s: None).run()
        dt = clock.t[steps - 1] - clock.t[warmup]
        return (steps - 1 - warmup) * cfg.tokens_per_step / dt


def run_plain(size: str, steps: int, warmup: int) -> float:
    """The same model, AdamW groups, schedule and clipping; no metrics, no callbacks, no checkpoints."""
    with tempfile.TemporaryDirectory() as d:
        cfg = make_cfg(size, steps, d + "/run")
        data = prepare(cfg.data, cfg.model.seq_len, log=lambda s: None)
        cfg.model.vocab_size = data.vocab_size
        torch.manual_seed(cfg.seed)
        model = GPT(cfg.model)
        opt = make_optimizer(model, cfg.optim)  # the trainer's own optimizer
        t = {}
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg.optim, step, steps) * g["lr_scale"]
            b = data.train.batch(batch_indices(cfg.seed, step, cfg.train.batch_size, data.train.n_seqs))
            out = model(b.idx, b.targets)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=True)
            if step in (warmup, steps - 1):
                t[step] = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (steps - 1 - warmup) * cfg.tokens_per_step / (t[steps - 1] - t[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1M", "10M"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.md"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for size in args.sizes:
        plain, ours = [], []
        for _ in range(args.repeats):
            plain.append(run_plain(size, args.steps, args.warmup))
            ours.append(run_trainer(size, args.steps, args.warmup))
        p, o = statistics.median(plain), statistics.median(ours)
        rows.append((size, p, o, 100 * (p / o - 1)))
        print(
            f"{size}: plain {p:,.0f} tok/s  trainer {o:,.0f} tok/s  overhead {100 * (p / o - 1):+.1f}%",
            flush=True,
        )
    lines = [
        "## Trainer overhead vs a plain PyTorch loop (CPU)",
        "",
        f"Command: `python benchmarks/bench_train.py --sizes {' '.join(args.sizes)} --steps {args.steps} "
        f"--repeats {args.repeats}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        "seq_len 128, batch 16 x 128 = 2,048 tokens/step, vocab 4096, fp32, log every 10 steps.  ",
        "Overhead = plain tokens/s / trainer tokens/s - 1 (median of alternating repeats). Target <= 5%.",
        "",
        "| model | plain loop tok/s | Trainer tok/s | overhead |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s} | {p:,.0f} | {o:,.0f} | {ov:+.1f}% |" for s, p, o, ov in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Overhead of the metrics stream on training throughput (CPU, 10M model).

    python benchmarks/bench_stream.py [--steps 15] [--repeats 3] [--threads 2]

Arms, interleaved so machine noise hits all alike: ``off`` (metrics.token_stats=false, metrics.gns=false:
the plain JSONL rows the trainer always wrote), ``stream`` (device token statistics + gradient noise
scale, one extra host transfer per flush), ``stream+fit`` (plus the in-process fitter refitting the
final-loss prediction at every flush). Reports the median tokens/s of the steady-state steps (the first
flush window, with warm-up and data loading, is dropped) and the overhead relative to ``off``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling_train import config as config_mod  # noqa: E402
from scaling_train.metrics.jsonl import read_jsonl  # noqa: E402
from scaling_train.train import RunConfig, Trainer  # noqa: E402

ARMS = {
    "off": ["metrics.token_stats=false", "metrics.gns=false"],
    "stream": [],
    "stream+fit": ["metrics.fit_in_process=true", "metrics.fit_every=1"],
}


def run(arm: str, root: Path, steps: int, threads: int, rep: int) -> float:
    d = root / f"{arm}-{rep}"
    over = [
        f"run_dir={d}", "model.size=10M", "model.seq_len=128", "data.max_bytes=4000000", "data.vocab_size=4096",
        f"threads={threads}", "train.batch_size=8", "train.micro_batch_size=4", f"train.max_steps={steps}",
        "train.log_every=3", "train.eval_every=0", "train.eval_batches=0", "train.ckpt_every=0",
        "train.progress=false", "optim.warmup_steps=3",
    ] + ARMS[arm]  # fmt: skip
    cfg = config_mod.load(RunConfig, None, over)
    Trainer(cfg, log=lambda s: None).run()
    rows = read_jsonl(d / "metrics.jsonl").rows[1:]  # drop the first window (warm-up)
    shutil.rmtree(d / "checkpoints", ignore_errors=True)
    return statistics.median(r["tokens_per_s"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    res: dict[str, list[float]] = {k: [] for k in ARMS}
    for rep in range(a.repeats):
        for arm in ARMS:
            res[arm].append(run(arm, root, a.steps, a.threads, rep))
            print(f"rep {rep} {arm:11s} {res[arm][-1]:9.0f} tok/s", flush=True)
    base = statistics.median(res["off"])
    print("\n| arm | median tokens/s | overhead vs off |\n| --- | --- | --- |")
    for arm, v in res.items():
        m = statistics.median(v)
        print(f"| {arm} | {m:,.0f} | {100 * (base - m) / base:+.1f}% |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Overhead of the metrics stream on training throughput (CPU, 10M model).

    python benchmarks/bench_stream.py [--steps 60] [--repeats 3] [--threads 2] [--mode paired|runs]
                                      [--micro-batch-size 4|8]

What is compared: ``off`` (metrics.token_stats=false, metrics.gns=false: the plain JSONL rows the trainer
always wrote), ``stream`` (device token statistics + gradient noise scale, one extra host transfer per
flush) and ``stream+fit`` (plus the in-process fitter refitting the final-loss prediction at every
flush).

``--mode paired`` (default): one training run per arm and repeat in which the stream is switched on and
off in alternate flush windows (3 steps each). Each window is timed from the end of the previous flush
to the end of its own, so the flush work (statistics transfer, fsync, sinks, fitter) is included. The
overhead is the ratio of adjacent on/off windows, so slow drifts of a shared machine (which moved whole
runs by +-5% here) cancel. Reported: the median ratio over all pairs and the ratio of the summed times.

``--mode runs``: separate runs per arm, order alternating between repeats; tokens/s end to end over the
steady-state steps, median over repeats. Kept as a cross-check; it needs many repeats on a noisy box.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling_train import config as config_mod  # noqa: E402
from scaling_train.fitter import sink as sink_mod  # noqa: E402
from scaling_train.metrics import stream as stream_mod  # noqa: E402
from scaling_train.metrics.jsonl import read_jsonl  # noqa: E402
from scaling_train.train import RunConfig, Trainer  # noqa: E402
from scaling_train.train import metrics_stream as trainer_stream_mod  # noqa: E402

ARMS = {
    "off": ["metrics.token_stats=false", "metrics.gns=false"],
    "stream": [],
    "stream+fit": ["metrics.fit_in_process=true", "metrics.fit_every=1"],
    # diagnostic arms (not run by default): one part of the stream at a time
    "stats": ["metrics.gns=false"],
    "gns": ["metrics.token_stats=false"],
}
DEFAULT_ARMS = ["off", "stream", "stream+fit"]
LOG_EVERY = 3
WARMUP_WINDOWS = 2  # first windows: data loading, allocator and thread-pool warm-up


def make_cfg(arm: str, d: Path, steps: int, threads: int, micro: int = 4) -> RunConfig:
    over = [
        f"run_dir={d}", "model.size=10M", "model.seq_len=128", "data.max_bytes=4000000", "data.vocab_size=4096",
        f"threads={threads}", "train.batch_size=8", f"train.micro_batch_size={micro}", f"train.max_steps={steps}",
        f"train.log_every={LOG_EVERY}", "train.eval_every=0", "train.eval_batches=0", "train.ckpt_every=0",
        "train.progress=false", "optim.warmup_steps=3",
    ] + ARMS[arm]  # fmt: skip
    return config_mod.load(RunConfig, None, over)


# ---------------------------------------------------------------------------------------------- runs


def run_separate(arm: str, root: Path, steps: int, threads: int, rep: int, micro: int = 4) -> float:
    d = root / f"{arm}-{rep}"
    # the in-process fitter as `scaling-train train` wires it (looks up sink_mod.FitterSink when called)
    Trainer(
        make_cfg(arm, d, steps, threads, micro), log=lambda s: None, sinks=[sink_mod.in_process_fitter]
    ).run()
    rows = read_jsonl(d / "metrics.jsonl").rows[1:]  # drop the first window (warm-up)
    shutil.rmtree(d, ignore_errors=True)
    # a row's "time" is taken before its flush work, so this span includes every flush but the last one's
    return (rows[-1]["tokens"] - rows[0]["tokens"]) / (rows[-1]["time"] - rows[0]["time"])


def main_runs(a: argparse.Namespace, arms: list[str], root: Path) -> None:
    res: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(a.repeats):
        for arm in arms if rep % 2 == 0 else arms[::-1]:  # alternate the order: no arm always runs first
            res[arm].append(run_separate(arm, root, a.steps, a.threads, rep, a.micro_batch_size))
            print(f"rep {rep} {arm:11s} {res[arm][-1]:9.0f} tok/s", flush=True)
    base = statistics.median(res["off"])
    print("\n| arm | median tokens/s | overhead vs off | repeats |\n| --- | --- | --- | --- |")
    for arm, v in res.items():
        m = statistics.median(v)
        print(f"| {arm} | {m:,.0f} | {100 * (base - m) / base:+.1f}% | {' / '.join(f'{x:.0f}' for x in v)} |")


# -------------------------------------------------------------------------------------------- paired


class Gate:
    """Which windows run the stream, and when each window ended."""

    on = True
    ends: list[float] = []
    flags: list[bool] = []
    on_sum = off_sum = 0.0  # seconds of the timed on / off windows of the last run

    @classmethod
    def reset(cls) -> None:
        cls.on, cls.ends, cls.flags = True, [], []


class GatedMetrics(trainer_stream_mod.TrainerMetrics):
    def split_micro_batch(self, *a):  # one micro-batch per step: the probe's two halves run in "on" only
        return Gate.on and super().split_micro_batch(*a)

    def on_micro_batch(self, *a):
        if Gate.on:
            super().on_micro_batch(*a)

    def on_before_step(self, *a):
        if Gate.on:
            super().on_before_step(*a)

    def on_flush(self, *a):
        if Gate.on:
            super().on_flush(*a)


class GatedFitter(sink_mod.FitterSink):
    def log(self, rows):
        if Gate.on:
            super().log(rows)


_orig_flush = stream_mod.MetricsStream.flush


def _timed_flush(self):
    offset = _orig_flush(self)
    Gate.ends.append(time.perf_counter())
    Gate.flags.append(Gate.on)
    Gate.on = not Gate.on
    return offset


def run_paired(arm: str, root: Path, steps: int, threads: int, rep: int, micro: int = 4) -> list[float]:
    """Ratios on/off of adjacent windows of one run with the stream gated per window."""
    d = root / f"{arm}-{rep}"
    Gate.reset()
    # the in-process fitter as `scaling-train train` wires it (looks up sink_mod.FitterSink when called)
    Trainer(
        make_cfg(arm, d, steps, threads, micro), log=lambda s: None, sinks=[sink_mod.in_process_fitter]
    ).run()
    shutil.rmtree(d, ignore_errors=True)
    n = steps // LOG_EVERY  # flushes of the loop (later ones are the final checkpoint and close)
    ends, flags = Gate.ends[:n], Gate.flags[:n]
    dur = {i: ends[i] - ends[i - 1] for i in range(WARMUP_WINDOWS, n)}
    ratios = []
    for i in range(WARMUP_WINDOWS, n - 1, 2):  # disjoint adjacent pairs
        on, off = (i, i + 1) if flags[i] else (i + 1, i)
        ratios.append(dur[on] / dur[off])
    Gate.on_sum = sum(v for i, v in dur.items() if flags[i])
    Gate.off_sum = sum(v for i, v in dur.items() if not flags[i])
    return ratios


def main_paired(a: argparse.Namespace, arms: list[str], root: Path) -> None:
    trainer_stream_mod.TrainerMetrics = GatedMetrics  # what open_trainer_stream registers
    sink_mod.FitterSink = GatedFitter
    stream_mod.MetricsStream.flush = _timed_flush
    tok_per_window = 8 * 128 * LOG_EVERY
    print(
        "| arm | median on/off window ratio | summed on/off | off tokens/s | pairs |\n| --- | --- | --- | --- | --- |"
    )
    for arm in [x for x in arms if x != "off"]:
        ratios, on_s, off_s, n_off = [], 0.0, 0.0, 0
        for rep in range(a.repeats):
            r = run_paired(arm, root, a.steps, a.threads, rep, a.micro_batch_size)
            ratios += r
            on_s, off_s = on_s + Gate.on_sum, off_s + Gate.off_sum
            n_off += sum(1 for f in Gate.flags[WARMUP_WINDOWS : a.steps // LOG_EVERY] if not f)
            print(
                f"# rep {rep} {arm}: median ratio {statistics.median(r):.4f} over {len(r)} pairs", flush=True
            )
        med = statistics.median(ratios)
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [med, med, med]
        print(
            f"| {arm} | {100 * (med - 1):+.1f}% (IQR {100 * (q[0] - 1):+.1f}% .. {100 * (q[2] - 1):+.1f}%) "
            f"| {100 * (on_s / off_s - 1):+.1f}% | {n_off * tok_per_window / off_s:,.0f} | {len(ratios)} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["paired", "runs"], default="paired")
    p.add_argument(
        "--micro-batch-size", type=int, default=4, choices=[1, 2, 4, 8],
        help="of the batch of 8: 4 = two micro-batches (probe on accumulation), 8 = one (probe on two halves)",
    )  # fmt: skip
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    a = p.parse_args()
    arms = a.arms.split(",")
    if "off" not in arms or not set(arms) <= set(ARMS):
        p.error(f"--arms={a.arms!r}: must include 'off' and only name arms of {sorted(ARMS)}")
    if a.steps < LOG_EVERY * (WARMUP_WINDOWS + 2):
        p.error(f"--steps={a.steps}: needs >= {LOG_EVERY * (WARMUP_WINDOWS + 2)} (two timed windows)")
    root = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        (main_paired if a.mode == "paired" else main_runs)(a, arms, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

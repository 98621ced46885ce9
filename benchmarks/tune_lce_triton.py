"""Tile sweep of the Triton fused loss on the device (one process, one shape; CUDA only).

    python benchmarks/tune_lce_triton.py                    # N=4096, H=4096, V=128256, bf16
    python benchmarks/tune_lce_triton.py --out tune.md

Three stages, each keeping the best of the one before: the forward kernel's (BLOCK_M, BLOCK_V, BLOCK_K,
warps, stages) timed on forward-only calls (`torch.no_grad`), then the dW kernel's tiles and the dlogits
kernel's tiles timed on forward + backward; `--stages profile` adds a per-kernel profile of one step. A
candidate that fails to compile (shared memory) is reported, not fatal. Each timing is the median of `--reps`
calls after one warm-up (which compiles). The winner is printed as the JSON that
`SCALING_TRAIN_LCE_TRITON_CONFIG` takes; bake it into `lce_triton.CUDA_CONFIGS` by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling_train.ops import linear_cross_entropy  # noqa: E402
from scaling_train.ops.lce_triton import CONFIG_ENV, _configs  # noqa: E402

FWD = [
    (128, 128, 64, 8, 3),
    (128, 128, 64, 4, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (64, 256, 64, 8, 3),
    (128, 128, 128, 8, 3),
    (256, 128, 64, 8, 3),
    (64, 128, 64, 4, 4),
]
DW = [
    (128, 128, 64, 8, 3),
    (128, 128, 64, 4, 4),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (64, 128, 64, 4, 3),
]
BWD = [(8, 1024, 4), (16, 512, 4), (4, 2048, 8), (32, 256, 4)]


def time_call(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(step) -> str:
    """Where one forward + backward spends its device time: kernels by total time (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        t = e.cuda_time_total if t is None else t
        if t > 0:
            rows.append((t / 3, e.count // 3, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    out = ["| kernel (per step) | calls | ms | share |", "| --- | ---: | ---: | ---: |"]
    out += [f"| `{k[:70]}` | {c} | {t / 1e3:.2f} | {100 * t / total:.0f}% |" for t, c, k in rows[:14]]
    out.append(f"| all kernels | | {total / 1e3:.2f} | |")
    print("\n".join(out), flush=True)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--h", type=int, default=4096)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--stages", default="fwd,dw,bwd", help="comma list of fwd, dw, bwd, profile")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("tune_lce_triton: no CUDA device; nothing to tune")
        return
    dt = getattr(torch, args.dtype)
    torch.manual_seed(0)
    hidden = torch.randn(args.n, args.h, dtype=dt, device="cuda").requires_grad_(True)
    weight = (torch.randn(args.v, args.h, dtype=dt, device="cuda") / args.h**0.5).requires_grad_(True)
    targets = torch.randint(0, args.v, (args.n,), device="cuda")
    flops_fwd, flops_step = 2 * args.n * args.h * args.v, 6 * args.n * args.h * args.v

    def fwd():
        with torch.no_grad():
            linear_cross_entropy(hidden, weight, targets, impl="triton")

    def step():
        hidden.grad = weight.grad = None
        linear_cross_entropy(hidden, weight, targets, impl="triton").loss.backward()

    best = {k: v for k, v in _configs(hidden.device).items() if k in ("fwd", "bwd", "dw")}
    lines = [
        f"### Tile sweep: N={args.n}, H={args.h}, V={args.v}, {args.dtype}, {torch.cuda.get_device_name()}",
        "",
        "| stage | candidate | ms (median) | TFLOP/s |",
        "| --- | --- | ---: | ---: |",
    ]
    stages = args.stages.split(",")
    if "profile" in stages:
        lines += ["", profile(step), ""]
    sweeps = (("fwd", FWD, fwd, flops_fwd), ("dw", DW, step, flops_step), ("bwd", BWD, step, flops_step))
    for stage, cands, fn, flops in sweeps:
        if stage not in stages:
            continue
        results = []
        for cand in cands:
            os.environ[CONFIG_ENV] = json.dumps({**best, stage: list(cand)})
            try:
                t = time_call(fn, args.reps)
            except Exception as e:  # noqa: BLE001 - a tile that does not fit is a result, not a crash
                lines.append(f"| {stage} | {cand} | failed: {type(e).__name__} | |")
                print(f"{stage} {cand}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            results.append((t, cand))
            lines.append(f"| {stage} | {cand} | {t * 1e3:.2f} | {flops / t / 1e12:.0f} |")
            print(f"{stage} {cand}: {t * 1e3:.2f} ms, {flops / t / 1e12:.0f} TFLOP/s", flush=True)
        if results:
            best[stage] = min(results)[1]
    os.environ.pop(CONFIG_ENV, None)
    winner = json.dumps({k: list(v) for k, v in best.items()})
    lines += ["", f"Best: `{CONFIG_ENV}='{winner}'`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""Benchmark of the fused LM-head cross-entropy: forward + backward time and peak extra memory.

    python benchmarks/bench_lce.py                       # CPU: N=4096, H=512, V=32768 fp32
    python benchmarks/bench_lce.py --gpu                 # GPU sizes (N in {4096, 16384}, H=4096, V=128256, bf16)
    python benchmarks/bench_lce.py --out benchmarks/results/lce.md

Every method runs in its own subprocess (one warm-up step, then timed steps, then one step for memory):
- CPU memory: peak RSS (VmHWM, reset through /proc/self/clear_refs after warm-up) minus the RSS before
  the measured step, with MALLOC_MMAP_THRESHOLD_=65536 so that freed buffers go back to the OS and RSS
  follows live memory (glibc would otherwise keep them and hide later allocations).
- GPU memory: torch.cuda.max_memory_allocated() minus the allocated bytes before the step.
"Extra" memory includes the gradients produced (dH, dW) for every method alike; inputs are excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "naive": "F.cross_entropy(hidden @ weight.T)",
    "naive_compiled": "torch.compile of naive (inductor)",
    "matmul_floor": "bare matmuls: z = h W^T, dH = z W, dW = z^T h (compute floor, time only)",
    "ours_torch": 'linear_cross_entropy(impl="torch")',
    "ours_torch_nostats": 'linear_cross_entropy(impl="torch", stats=False)',
    "ours_cpp": 'linear_cross_entropy(impl="cpp")',
    "ours_cpp_nostats": 'linear_cross_entropy(impl="cpp", stats=False)',
    "ours_triton": 'linear_cross_entropy(impl="triton")',
    "ours_triton_nostats": 'linear_cross_entropy(impl="triton", stats=False)',
    "liger": "LigerFusedLinearCrossEntropyLoss",
    "cce": "cut_cross_entropy.linear_cross_entropy",
}


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_step(method: str, hidden, weight, targets):
    """A closure running one forward + backward (or the bare matmuls), or None when unavailable."""
    if method == "naive":

        def step():
            F.cross_entropy(hidden @ weight.T, targets).backward()

        return step
    if method == "naive_compiled":
        fn = torch.compile(lambda h, w, t: F.cross_entropy(h @ w.T, t))
        return lambda: fn(hidden, weight, targets).backward()
    if method == "matmul_floor":

        def step():
            with torch.no_grad():
                z = hidden @ weight.T  # (N, V)
                _ = z @ weight  # dH
                _ = z.T @ hidden  # dW

        return step
    if method.startswith("ours_"):
        from scaling_train.ops import linear_cross_entropy
        from scaling_train.ops.lce import resolve_impl

        impl = method.split("_")[1]
        try:
            resolve_impl(impl, hidden.device)
        except (RuntimeError, ValueError):
            return None
        stats = not method.endswith("nostats")
        return lambda: linear_cross_entropy(hidden, weight, targets, impl=impl, stats=stats).loss.backward()
    if method == "liger":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return None
        loss_fn = LigerFusedLinearCrossEntropyLoss()
        return lambda: loss_fn(weight, hidden, targets).backward()
    if method == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except ImportError:
            return None
        return lambda: cce(hidden, weight, targets).backward()
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def worker(method: str, n: int, h: int, v: int, dtype: str, device: str, reps: int) -> dict:
    """Runs in a fresh process: time and peak extra memory of one method."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    dev = torch.device(device)
    hidden = torch.randn(n, h, dtype=dt, device=dev).requires_grad_(True)
    weight = (torch.randn(v, h, dtype=dt, device=dev) / h**0.5).requires_grad_(True)
    targets = torch.randint(0, v, (n,), device=dev)
    step = _make_step(method, hidden, weight, targets)
    if step is None:
        return {"method": method, "available": False}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def clear():
        hidden.grad = weight.grad = None

    step()  # warm-up: compilation, thread pools, BLAS buffers
    sync()
    clear()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        clear()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_bytes("VmRSS")
        step()
        extra = _rss_bytes("VmHWM") - base
    return {
        "method": method,
        "available": True,
        "times": times,
        "time": statistics.median(times),
        "extra": extra,
    }


def run_method(method: str, args, n: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--n",
        str(n),
        "--h",
        str(args.h),
        "--v",
        str(args.v),
    ]
    cmd += ["--dtype", args.dtype, "--device", args.device, "--reps", str(args.reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": method, "available": False, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def report(results: list[dict], args, n: int) -> str:
    """Markdown table; ratios use the fastest repetition (robust on a shared, loaded machine)."""
    by = {r["method"]: r for r in results if r.get("available")}
    naive, floor = by.get("naive"), by.get("matmul_floor")
    fastest = min((min(r["times"]) for r in by.values()), default=1.0)
    unit, k = ("ms", 1e3) if fastest < 0.1 else ("s", 1.0)  # small shapes: milliseconds, not 0.00 s
    lines = [
        f"### N={n}, H={args.h}, V={args.v}, {args.dtype}, {args.device}",
        "",
        f"| method | time min / median of {args.reps} ({unit}) | x naive | x matmul floor "
        "| peak extra memory (MiB) | x naive memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        desc = METHODS[r["method"]]
        if not r.get("available"):
            lines.append(f"| `{r['method']}` ({desc}) | not available | | | | |")
            continue
        best = min(r["times"])
        t_naive = f"{best / min(naive['times']):.2f}" if naive else ""
        t_floor = f"{best / min(floor['times']):.2f}" if floor else ""
        mem = "" if r["method"] == "matmul_floor" else _fmt_mb(r["extra"])
        m_naive = "" if r["method"] == "matmul_floor" or not naive else f"{r['extra'] / naive['extra']:.2f}"
        lines.append(
            f"| `{r['method']}` ({desc}) | {best * k:.2f} / {r['time'] * k:.2f} | {t_naive} | {t_floor} | {mem} | {m_naive} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU sizes (default when CUDA is available)")
    p.add_argument("--n", type=int, nargs="*", default=None)
    p.add_argument("--h", type=int, default=None)
    p.add_argument("--v", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the markdown tables here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    gpu = args.gpu or (args.device is None and torch.cuda.is_available())
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.h = args.h or (4096 if gpu else 512)
    args.v = args.v or (128256 if gpu else 32768)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    sizes = args.n or ([4096, 16384] if gpu else [4096])

    if args.worker:
        print(json.dumps(worker(args.worker, sizes[0], args.h, args.v, args.dtype, args.device, args.reps)))
        return

    default = ["naive", "naive_compiled", "matmul_floor", "ours_torch", "ours_torch_nostats"]
    default += (
        ["ours_triton", "ours_triton_nostats", "liger", "cce"] if gpu else ["ours_cpp", "ours_cpp_nostats"]
    )
    methods = args.methods or default
    if gpu:
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    sections = []
    for n in sizes:
        results = []
        for m in methods:
            r = run_method(m, args, n)
            print(json.dumps(r), flush=True)
            results.append(r)
        sections.append(report(results, args, n))
    text = (
        f"Command: `python {' '.join(sys.argv)}`  \n"
        f"Device: {device_name}; torch {torch.__version__}; threads {torch.get_num_threads()}\n\n"
        + "\n\n".join(sections)
        + "\n"
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

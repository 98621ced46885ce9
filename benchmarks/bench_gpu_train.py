"""Training throughput and MFU on one GPU: the GPT of a named size, bf16 autocast, AdamW, random tokens.

    python benchmarks/bench_gpu_train.py                          # 100M and 400M, seq 1024, batch 16
    python benchmarks/bench_gpu_train.py --sizes 100M --steps 30 --out gpu_train.md

Each row is one configuration in a fresh model: the LM-head loss through our Triton kernel or our chunked
torch path (`model.loss_impl`), eager or `torch.compile`d. Timed window: steps `warmup` .. `steps` (the first
steps compile and warm the allocator), synchronised at both ends. FLOPs per token are
`sizes.flops_per_token(shape, seq_len, vocab_size=V)`: 6N + 6 L T d (attention, not halved for the causal
mask) + 6 d V (LM head); MFU = FLOPs/s over the card's dense bf16 peak (`--peak`, default 989 TFLOP/s for
H100/H200 SXM). Random tokens: throughput does not depend on the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling_train.models import GPT, ModelConfig, flops_per_token, shape_for  # noqa: E402
from scaling_train.models.sizes import parse_size  # noqa: E402


def run(size: str, impl: str, compiled: bool, args) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(size=size, vocab_size=args.vocab, seq_len=args.seq_len, loss_impl=impl)
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if compiled else model
    idx = torch.randint(0, args.vocab, (args.batch, args.seq_len), device="cuda")
    tgt = torch.randint(0, args.vocab, (args.batch, args.seq_len), device="cuda")
    t0 = 0.0
    for step in range(args.steps + 1):
        if step == args.warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(idx, tgt).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = (args.steps + 1 - args.warmup) * args.batch * args.seq_len
    shape = shape_for(parse_size(size))
    fpt = flops_per_token(shape, args.seq_len, vocab_size=args.vocab)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, fwd
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tps = tokens / dt
    return dict(size=size, impl=impl, compiled=compiled, tok_s=tps, mfu=tps * fpt / args.peak, mem=peak_mem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["100M", "400M"])
    ap.add_argument("--impls", nargs="+", default=["triton", "torch"])
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--peak", type=float, default=989e12, help="dense bf16 FLOP/s of the card")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_train: no CUDA device; nothing to measure")
        return
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    lines = [
        f"### Training throughput, {torch.cuda.get_device_name()}, torch {torch.__version__}",
        "",
        f"Command: `python {' '.join(sys.argv)}`; seq {args.seq_len}, batch {args.batch} "
        f"({args.batch * args.seq_len:,} tokens/step), vocab {args.vocab}, bf16 autocast, fused AdamW, "
        f"steps {args.warmup}..{args.steps}; MFU against {args.peak / 1e12:.0f} TFLOP/s.",
        "",
        "| size | loss | compiled | tokens/s | MFU | peak memory (GiB) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for size in args.sizes:
        for compiled in modes:
            for impl in args.impls:
                try:
                    r = run(size, impl, compiled, args)
                except Exception as e:  # noqa: BLE001 - one failing configuration is a finding, not a stop
                    lines.append(
                        f"| {size} | {impl} | {compiled} | failed: {type(e).__name__}: {str(e)[:120]} | | |"
                    )
                    print(lines[-1], flush=True)
                    torch.cuda.empty_cache()
                    continue
                lines.append(
                    f"| {size} | {impl} | {compiled} | {r['tok_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['mem']:.1f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

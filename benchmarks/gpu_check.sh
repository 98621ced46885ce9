#!/usr/bin/env bash
# The GPU check, as one script: correctness of the kernels on CUDA, a tile sweep, the fused loss against
# naive / compiled / Liger / CCE, and training throughput. Runs end to end on a CPU-only machine too (every
# CUDA part then reports that it skipped). Results go under $OUT (default ./gpu_check_out).
#
#   bash benchmarks/gpu_check.sh                  # here: CPU, GPU parts skipped
#   device run: carry .whl (liger-kernel, cut-cross-entropy wheels; see the device README), same command
set -u
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import liger_kernel, cut_cross_entropy" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  $PY -c "import liger_kernel, cut_cross_entropy; print('liger-kernel and cut-cross-entropy importable')" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME TIMEOUT CMD...: run with a limit, keep its log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%T))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?" >> "$OUT/$name.log"
  tail -25 "$OUT/$name.log"
}

if [ "$cuda" = 1 ]; then
  step tests 100 $PY -m pytest -q -p no:cacheprovider -m gpu tests/ops -rs
  step profile 30 $PY benchmarks/tune_lce_triton.py --stages profile --out "$OUT/profile.md"
  step train 75 $PY benchmarks/bench_gpu_train.py --compile off --out "$OUT/train.md"
  step lce 95 $PY benchmarks/bench_lce.py --gpu --n 16384 --reps 20 --out "$OUT/lce.md" \
    --methods naive matmul_floor ours_triton ours_triton_nostats liger cce
  [ -n "${FULL:-}" ] && step tune 100 $PY benchmarks/tune_lce_triton.py --out "$OUT/tune.md"
else
  echo "no CUDA device: the GPU parts are skipped (the gpu-marked tests skip with a reason in the normal suite)"
  step tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests/ops -rs
  step tune 30 $PY benchmarks/tune_lce_triton.py
  step train 30 $PY benchmarks/bench_gpu_train.py
fi
echo "== done ($(date -u +%T))"

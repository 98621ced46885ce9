#!/usr/bin/env bash
# One training run on this node or across nodes through torchrun (c10d rendezvous).
#
#   launch/run_train.sh CONFIG [key=value ...]                         # all GPUs of this node (or 1 CPU process)
#   NPROC=2 launch/run_train.sh configs/train/tiny.yaml device=cpu     # 2 CPU processes, DDP over gloo
#   NNODES=2 NODE_RANK=$i MASTER_ADDR=node0 launch/run_train.sh CONFIG dist.strategy=fsdp   # on each node
#
# Environment: NPROC (processes per node; default: GPUs, else 1), NNODES (1), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500), RDZV_ID (scaling-train), PYTHON (python). Inside Slurm, NNODES and MASTER_ADDR
# default to the allocation ($SLURM_NNODES, first host of `scontrol show hostnames`).
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,12p' "$0"; exit 2; fi
PYTHON="${PYTHON:-python}"
if [ -z "${NPROC:-}" ]; then
  NPROC="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  NNODES="${NNODES:-${SLURM_NNODES:-1}}"
  MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
fi
NNODES="${NNODES:-1}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ "$NNODES" = 1 ] && [ "$NPROC" = 1 ]; then
  exec "$PYTHON" -m scaling_train.cli train "$@"
fi
if [ "$NNODES" = 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m scaling_train.cli train "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-scaling-train}" \
  -m scaling_train.cli train "$@"

"""A hand-written accelerate loop with ``ScalingLawTracker.watch``, for the accelerate tests.

    PYTHONPATH=. python tests/integrations/accelerate_script.py RUN_DIR   # one process, 2 micro-batches of 4
    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node 2 tests/integrations/accelerate_script.py RUN_DIR   # 2 ranks x 4 (gloo)

Both see the same 8 sequences per step (no shuffling, no dropout). The one-process run also writes the
squared gradient norms it measures itself (``manual.json``: first micro-batch x accum^2, whole step).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from accelerate import Accelerator, PartialState

from scaling_train.integrations import ScalingLawTracker
from scaling_train.integrations.meta import count_params
from scaling_train.train.backend import leave_and_exit
from tests.integrations import tiny_gpt2

STEPS = 8


def main(run_dir: str) -> None:
    # the distributed state first (before the model: transformers may create a default PartialState), so
    # the tracker's __init__ runs on the main process only
    world = PartialState(cpu=True).num_processes
    accum = 2 if world == 1 else 1
    model, data = tiny_gpt2.model(), tiny_gpt2.pattern_data(STEPS * 8)
    dl = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)
    tracker = ScalingLawTracker(
        run_dir, total_steps=STEPS, lr_schedule=[1e-3] * STEPS, params=count_params(model)
    )
    acc = Accelerator(gradient_accumulation_steps=accum, cpu=True, log_with=[tracker])
    acc.init_trackers("test")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt, dl = acc.prepare(model, opt, dl)
    tracker.watch(model, opt)
    params = [p for p in model.parameters()]
    manual, step, micro, loss_sum = [], 0, 0, 0.0
    for batch in dl:
        with acc.accumulate(model):
            out = model(**batch)
            acc.backward(out.loss)
            loss_sum += float(acc.reduce(out.loss.detach(), "mean")) / accum  # over the ranks
            micro += 1
            if world == 1 and micro == 1:
                small = accum**2 * sum(float(p.grad.double().pow(2).sum()) for p in params)
            if acc.sync_gradients and world == 1:
                manual.append([small, sum(float(p.grad.double().pow(2).sum()) for p in params)])
            opt.step()
            opt.zero_grad()
        if acc.sync_gradients:
            step, micro = step + 1, 0
            if step % 2 == 0:
                acc.log({"loss": loss_sum / 2}, step=step)  # no "tokens": the tracker counts them
                loss_sum = 0.0
    acc.end_training()
    if world == 1:
        with open(os.path.join(run_dir, "manual.json"), "w") as f:
            json.dump(manual, f)
    leave_and_exit()  # while the model (and its DDP wrapper) is still alive


if __name__ == "__main__":
    main(sys.argv[1])

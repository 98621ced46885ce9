"""A stock transformers Trainer with only ``ScalingLawCallback``, for the DDP test.

    PYTHONPATH=. python tests/integrations/hf_ddp_script.py RUN_DIR   # one process, 2 micro-batches of 4
    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node 2 tests/integrations/hf_ddp_script.py RUN_DIR   # 2 ranks x 4, gloo

Both see the same 8 sequences per step; the model has no dropout, so the gradients agree.
"""

from __future__ import annotations

import os
import sys

import transformers

from scaling_train.integrations import ScalingLawCallback
from scaling_train.train.backend import leave_and_exit
from tests.integrations import tiny_gpt2


def main(run_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model, data = tiny_gpt2.model(), tiny_gpt2.pattern_data(64)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(run_dir, "hf_out"), max_steps=8, per_device_train_batch_size=4,
        gradient_accumulation_steps=2 if world == 1 else 1, logging_steps=2, learning_rate=3e-3,
        lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        include_num_input_tokens_seen=True, dataloader_num_workers=0, seed=0,
        **({"ddp_backend": "gloo"} if world > 1 else {}),
    )  # fmt: skip
    cb = ScalingLawCallback(run_dir)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    leave_and_exit()  # while the Trainer (and its DDP wrapper) is still alive


if __name__ == "__main__":
    main(sys.argv[1])

"""Where a run's parallelism is decided: the only module that knows about process groups
(and, via accelerate, about DDP / FSDP / DeepSpeed). Model code stays single-device.

``make_backend(cfg)`` returns an object with the small interface the trainer uses: device, rank,
world_size, is_main, ``prepare``, ``autocast``, ``backward``, ``no_sync``, ``clip_grad_norm``,
``all_reduce_mean``, ``barrier``, ``unwrap``, ``model_state``/``load_model_state``,
``optim_state``/``load_optim_state``. ``leave_and_exit()`` ends a finished multi-process worker.

Strategies (``dist.strategy``; torchrun sets the process count):

    scaling-train train CONFIG                                          # SingleDevice
    torchrun --nproc_per_node 2 -m scaling_train.cli train CONFIG       # DDP (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 8 -m scaling_train.cli train CONFIG dist.strategy=deepspeed dist.zero_stage=3
    torchrun --nproc_per_node 8 -m scaling_train.cli train CONFIG dist.strategy=fsdp
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was requested but torch.cuda.is_available() is False; use device=cpu"
        )
    return torch.device(device)


class SingleDevice:
    """One process on one device (CPU or one GPU)."""

    rank = 0
    local_rank = 0
    world_size = 1
    is_main = True
    name = "single"

    def __init__(self, device: str = "auto", precision: str = "auto") -> None:
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module):
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float | None) -> torch.Tensor:
        """Global grad norm as a device tensor (no host sync); clips when ``max_norm`` is set."""
        params = [p for p in model.parameters() if p.grad is not None]
        if max_norm is None:
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def model_state(self, model: nn.Module) -> dict[str, Any]:
        return self.unwrap(model).state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.unwrap(model).load_state_dict(state)

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optim_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


# --------------------------------------------------------------------------- distributed (accelerate)
DDP_MAX_PARAMS = 3e8
"""auto strategy: DDP below this many non-embedding params, FSDP (full shard) from it (optimizer state
of 16 bytes/param = 4.8 GB at 3e8 starts to crowd a GPU next to activations)."""
ZERO3_MIN_PARAMS = 1e9
"""auto ZeRO stage: 2 below this many non-embedding params, 3 from it (at 1e9 the fp32 master weights
and Adam moments, 12 bytes/param = 12 GB, no longer fit comfortably replicated next to activations).
ZeRO-3 works with the fused loss because ``models.gpt.LMHead`` reads the head weight only inside its
own forward and returns plain tensors, which DeepSpeed hooks to re-gather the weight for backward."""


def _n_params(cfg) -> float:
    from scaling_train.models import sizes

    return float(sizes.non_embedding_params(cfg.model.shape))


def choose_strategy(cfg, world_size: int) -> str:
    """The strategy ``dist.strategy=auto`` resolves to (see DDP_MAX_PARAMS)."""
    s = cfg.dist.strategy
    if s != "auto":
        return s
    if world_size == 1:
        return "single"
    return "ddp" if _n_params(cfg) < DDP_MAX_PARAMS else "fsdp"


def choose_zero_stage(cfg) -> int:
    """``dist.zero_stage`` or, when null, 2 below ZERO3_MIN_PARAMS and 3 from it."""
    if cfg.dist.zero_stage is not None:
        return cfg.dist.zero_stage
    return 2 if _n_params(cfg) < ZERO3_MIN_PARAMS else 3


def deepspeed_config(cfg, *, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed config generated from a run config (nothing to keep in sync by hand).

    train_batch_size = micro_batch_size * grad_accum * world_size = cfg.train.batch_size."""
    mb = cfg.train.micro_batch_size or cfg.train.batch_size // world_size
    accum = cfg.train.batch_size // (world_size * mb)
    stage = choose_zero_stage(cfg)
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # full weights for our checkpoints
    if cfg.dist.offload and stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": mb * accum * world_size,
        "train_micro_batch_size_per_gpu": mb,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our torch AdamW with per-group lr_scale (muP)
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class Distributed(SingleDevice):
    """Several processes (torchrun env: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR) through accelerate.

    ``strategy`` is one of ddp | fsdp | deepspeed. The process group uses ``comm_backend`` (nccl on GPU,
    gloo on CPU). Checkpoints stay the trainer's single file: model and optimizer states are gathered
    to full tensors (DDP, FSDP) or, for DeepSpeed ZeRO's partitioned optimizer, a list with one entry
    per rank (resume needs the same world size; the error says so).
    """

    def __init__(self, cfg, strategy: str) -> None:
        import torch.distributed as dist
        from accelerate import Accelerator

        self.cfg = cfg
        self.name = strategy
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.is_main = self.rank == 0
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if want_cuda:
            torch.cuda.set_device(self.local_rank)
        comm = cfg.dist.comm_backend
        if comm == "auto":
            comm = "nccl" if want_cuda else "gloo"
        self.comm_backend = comm
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if want_cuda else "fp32")
        self.precision = precision
        if not dist.is_initialized():
            if strategy == "deepspeed":
                import deepspeed

                deepspeed.init_distributed(dist_backend=comm)
            else:
                dist.init_process_group(backend=comm)
        kw: dict[str, Any] = {"cpu": not want_cuda, "mixed_precision": "no"}
        self.zero_stage = None
        if strategy == "deepspeed":
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            kw.pop("cpu")  # cpu=True would make accelerate ignore the DeepSpeed plugin
            from accelerate.utils import DeepSpeedPlugin

            self.ds_config = deepspeed_config(cfg, world_size=self.world_size, precision=precision)
            self.zero_stage = self.ds_config["zero_optimization"]["stage"]
            kw["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=self.ds_config)
            kw["mixed_precision"] = "bf16" if precision == "bf16" else "no"
        self.acc = Accelerator(**kw)
        # accelerate says cpu:0 on CPU; torch.load cannot map checkpoints onto 'cpu:0'
        self.device = self.acc.device if want_cuda else torch.device("cpu")
        self._boundary = True
        self.engine = None
        # The trainer does not leave the group itself (the train CLI calls leave_and_exit); a live gloo
        # group torn down by interpreter exit can abort ("terminate called without an active
        # exception"), so leave it cleanly at exit.
        import atexit

        atexit.register(self._destroy_group)

    @staticmethod
    def _destroy_group() -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self.name == "fsdp":
            return self._prepare_fsdp(model, optimizer)
        if self.name == "ddp":
            # torch DDP directly: accelerate's default comm-hook registration fails on torch 2.13
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model.to(self.device), device_ids=ids), optimizer
        model, optimizer = self.acc.prepare(model, optimizer)
        if self.name == "deepspeed":
            import deepspeed

            if not isinstance(model, deepspeed.DeepSpeedEngine):
                raise RuntimeError(
                    f"accelerate did not build a DeepSpeed engine (distributed_type={self.acc.distributed_type})"
                )
            self.engine = model
        return model, optimizer

    def _prepare_fsdp(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """FSDP2 (``fully_shard``) per block, then the root; torch directly, since accelerate's FSDP
        refuses CPU. Sharding replaces the parameters, so the optimizer is rebuilt with the same groups."""
        from torch.distributed.fsdp import fully_shard

        names = {id(p): n for n, p in model.named_parameters()}
        groups = [
            ([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
            for g in optimizer.param_groups
        ]
        model = model.to(self.device)
        reshard = self.cfg.dist.fsdp_sharding == "full_shard"
        if self.cfg.dist.fsdp_sharding == "no_shard":
            raise ValueError("dist.fsdp_sharding=no_shard is DDP: use dist.strategy=ddp")
        for block in getattr(model, "blocks", []):
            fully_shard(block, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
        params = dict(model.named_parameters())
        new_groups = [{"params": [params[n] for n in ns], **hp} for ns, hp in groups]
        import inspect

        accepted = inspect.signature(type(optimizer).__init__).parameters
        opt = type(optimizer)(
            new_groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"}
        )
        self._fsdp_model = model
        return model, opt

    def autocast(self):
        if self.name == "deepspeed":  # DeepSpeed holds bf16 weights itself
            return contextlib.nullcontext()
        return super().autocast()

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            # The trainer scales each micro-batch loss by 1/accum; DeepSpeed scales by 1/gas again.
            gas = self.ds_config["gradient_accumulation_steps"]
            self.engine.set_gradient_accumulation_boundary(self._boundary)
            self.engine.backward(loss * gas)
            if self._boundary:
                self.engine.step()  # clip (gradient_clipping), optimizer step, zero grads
            return
        self.acc.backward(loss)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        self._boundary = False
        try:
            if self.engine is not None:
                yield
            elif self.name == "fsdp":
                model.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    model.set_requires_gradient_sync(True)
            else:
                with model.no_sync():
                    yield
        finally:
            self._boundary = True

    def clip_grad_norm(self, model: nn.Module, max_norm: float | None) -> torch.Tensor:
        if self.engine is not None:  # already clipped and stepped in backward()
            g = self.engine.get_global_grad_norm()
            return torch.as_tensor(
                float(g) if g is not None else float("nan"), dtype=torch.float64, device=self.device
            )
        if self.name == "fsdp":  # DTensor gradient shards: the norm is a collective
            params = [p for p in model.parameters() if p.grad is not None]
            inf = float("inf")
            norm = torch.nn.utils.clip_grad_norm_(
                params, max_norm if max_norm is not None else inf, foreach=True
            )
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return super().clip_grad_norm(model, max_norm)  # DDP: gradients are already identical on all ranks

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def unwrap(self, model: nn.Module) -> nn.Module:
        if self.name == "fsdp":
            return model  # FSDP2 shards in place: same module
        return self.acc.unwrap_model(model, keep_torch_compile=False)

    # Checkpoint states (collectives: called on every rank, saved by rank 0, loaded by every rank).
    def model_state(self, model: nn.Module) -> dict[str, Any]:
        if self.name == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if self.zero_stage == 3:
            state = self.acc.get_state_dict(model)  # gathers full tensors
            return {k: v.detach().cpu() for k, v in state.items()} if state else {}
        return {k: v.detach().cpu() for k, v in self.unwrap(model).state_dict().items()}

    def load_model_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        if self.name == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        elif self.zero_stage == 3:
            import deepspeed

            params = list(self.unwrap(model).parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                if self.is_main:
                    self.unwrap(model).load_state_dict(state)
        else:
            self.unwrap(model).load_state_dict(state)

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        import torch.distributed as dist

        if self.engine is not None:
            mine = self.engine.optimizer.state_dict()  # this rank's ZeRO partition
            parts: list[Any] = [None] * self.world_size
            dist.all_gather_object(parts, mine)
            return {"zero_partitions": parts, "world_size": self.world_size}
        if self.name == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self._fsdp_model, optimizer, options=opts)
        return optimizer.state_dict()

    def load_optim_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if self.engine is not None:
            saved = state.get("world_size")
            if saved != self.world_size:
                raise RuntimeError(
                    f"this DeepSpeed checkpoint holds ZeRO partitions of world_size={saved}; resume with "
                    f"{saved} processes (now {self.world_size}) or start a new run_dir"
                )
            self.engine.optimizer.load_state_dict(state["zero_partitions"])
            return
        if self.name == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self._fsdp_model,
                optimizer,
                state,
                options=StateDictOptions(full_state_dict=True),
            )
            return
        optimizer.load_state_dict(state)


def leave_and_exit() -> None:
    """End a finished torchrun worker (nothing happens in a single process, WORLD_SIZE <= 1): every rank
    meets at a barrier and leaves the group if it is still up, then the process exits without
    interpreter teardown. gloo/FSDP background threads destroyed by C++ static destructors sometimes
    abort a finished process ("terminate called without an active exception"), which torchrun reports as
    a failure. Call it while the model is still referenced: freeing a DDP model first can abort the same
    way. A group someone already destroyed (accelerate's ``end_training`` does) still gets the exit."""
    import sys

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def make_backend(cfg) -> SingleDevice:
    """The backend for a run config: one process unless launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = choose_strategy(cfg, world)
    if strategy == "single" or world == 1:
        if cfg.dist.strategy not in ("auto", "single") and world == 1:
            # Allowed (e.g. a dry check) but say so: one process has nothing to shard.
            print(f"[backend] dist.strategy={cfg.dist.strategy} with one process: running single-device")
        return SingleDevice(cfg.device, cfg.precision)
    return Distributed(cfg, strategy)

"""Where a run's parallelism is decided: the only module that knows about process groups
(and, via accelerate, about DDP / FSDP / DeepSpeed). Model code stays single-device.

``make_backend(cfg)`` returns an object with the small interface the trainer uses: device, rank,
world_size, is_main, ``prepare``, ``autocast``, ``backward``, ``no_sync``, ``clip_grad_norm``,
``all_reduce_mean``, ``barrier``, ``unwrap``, ``model_state``/``load_model_state``,
``optim_state``/``load_optim_state``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False; use device=cpu")
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

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
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

    def shutdown(self) -> None:
        pass


def make_backend(cfg) -> SingleDevice:
    """The backend for a run config (single process; distributed backends come via torchrun)."""
    return SingleDevice(cfg.device, cfg.precision)

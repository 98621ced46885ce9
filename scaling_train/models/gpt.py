"""A single-device GPT decoder (nanoGPT-sized file; parallelism is applied in train/backend.py only).

Pre-norm RMSNorm, rotary position embeddings, SwiGLU MLP, ``F.scaled_dot_product_attention``,
optional tied embeddings, init scaled by depth, optional muP. The loss goes through the fused
``scaling_train.ops.linear_cross_entropy`` so the (B*T, V) logits are never materialised.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scaling_train.config import doc
from scaling_train.models import sizes
from scaling_train.ops import LCEOutput, linear_cross_entropy


@dataclass
class ModelConfig:
    size: str | None = doc(
        "Named size of the family ('0.2M', '1M', ... '3B', or any number like '3.2e7'); fills "
        "d_model/n_layers/n_heads/d_ff that are left null. See scaling_train/models/sizes.py.",
        "1M",
    )
    d_model: int | None = doc("Residual width; null = from `size`.", None)
    n_layers: int | None = doc("Number of transformer blocks; null = from `size`.", None)
    n_heads: int | None = doc("Attention heads (must divide d_model); null = from `size`.", None)
    d_ff: int | None = doc("SwiGLU hidden width; null = 8/3*d_model rounded up to 32.", None)
    vocab_size: int | None = doc("Vocabulary size; null = the tokenizer's.", None)
    seq_len: int = doc("Context length in tokens.", 256)
    tie_embeddings: bool = doc("Share the token embedding and the LM head.", False)
    rope_theta: float = doc("RoPE base.", 10000.0)
    norm_eps: float = doc("RMSNorm epsilon.", 1e-6)
    init_std: float = doc(
        "Init std of weight matrices; output projections get init_std/sqrt(2*n_layers).", 0.02
    )
    mup: bool = doc(
        "muP parametrisation: hidden init and LR scale with base_width/d_model, readout 1/m.", False
    )
    mup_base_width: int = doc("muP base width (the width at which the LR was tuned).", 128)
    attn_doc_mask: bool = doc("Block attention across packed documents (uses segment_ids).", False)
    loss_impl: Literal["auto", "triton", "cpp", "torch"] = doc("Fused-loss implementation.", "auto")
    z_loss: float = doc("z-loss coefficient (PaLM), added to the training loss only.", 0.0)
    logit_softcap: float | None = doc("Soft-cap logits at this value (Gemma 2), null = off.", None)

    def __post_init__(self) -> None:
        shape = None
        if self.size is not None:
            shape = sizes.shape_for(sizes.parse_size(self.size))
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) is None:
                if shape is None:
                    raise ValueError(f"model.{name} is null and model.size is null: set one of them")
                setattr(self, name, getattr(shape, name))
            elif getattr(self, name) <= 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be > 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim={self.d_model // self.n_heads} must be even for RoPE")
        if self.seq_len < 2:
            raise ValueError(f"model.seq_len={self.seq_len} must be >= 2")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"model.vocab_size={self.vocab_size} must be >= 2")
        if self.mup and self.mup_base_width <= 0:
            raise ValueError(f"model.mup_base_width={self.mup_base_width} must be > 0")

    @property
    def shape(self) -> sizes.Shape:
        return sizes.Shape(self.d_model, self.n_layers, self.n_heads, self.d_ff)  # type: ignore[arg-type]

    @property
    def width_mult(self) -> float:
        """muP width multiplier m = d_model / base_width (1 without muP)."""
        return self.d_model / self.mup_base_width if self.mup else 1.0  # type: ignore[operator]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)  # (T, head_dim/2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, n_heads, T, head_dim); rotate pairs (x1, x2) of the two halves
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens already run (inference: incremental decoding).

    ``GPT.hidden_states(idx, cache=c)`` runs ``idx`` at positions ``c.pos ..`` and appends to the cache;
    rows of one batch advance together. Positions cannot exceed ``model.seq_len`` (RoPE tables)."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.pos = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.k):
            self.k.append(k)
            self.v.append(v)
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads  # type: ignore[operator]
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # type: ignore[arg-type]
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # type: ignore[arg-type]
        # muP: attention logits scale 1/head_dim instead of 1/sqrt(head_dim) (equal at the base width)
        self.scale = math.sqrt(cfg.mup_base_width / cfg.n_heads) / self.head_dim if cfg.mup else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
        cache: KVCache | None = None, layer: int = 0,
    ):  # fmt: skip
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, n_heads, T, head_dim)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, n_heads, S, head_dim), S = cached + T
        S = k.shape[2]
        if S > T:  # after cached tokens: the new queries sit at positions S-T .. S-1, causal over all keys
            causal = (
                None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=self.scale)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=False)
        self.w_up = nn.Linear(d_model, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = RMSNorm(cfg.d_model, cfg.norm_eps)  # type: ignore[arg-type]
        self.attn = Attention(cfg)
        self.norm_mlp = RMSNorm(cfg.d_model, cfg.norm_eps)  # type: ignore[arg-type]
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)  # type: ignore[arg-type]

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.norm_attn(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.norm_mlp(x))


class LMHead(nn.Module):
    """The output projection and the fused loss in one module, so that the head weight is only read
    inside this module's forward (DeepSpeed ZeRO-3 and FSDP gather a module's parameters around its
    forward; reading ``weight`` from outside would see a partitioned tensor)."""

    def __init__(self, cfg: ModelConfig, weight: nn.Parameter | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if weight is None:  # untied: the head owns its (V, d_model) weight
            self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))  # type: ignore[arg-type]
        else:  # tied: borrow the embedding's without registering it twice
            self._tied = [weight]

    @property
    def head_weight(self) -> torch.Tensor:
        return self.weight if "weight" in self._parameters else self._tied[0]

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, **loss_kw
    ) -> tuple | torch.Tensor:
        """Logits (B, T, V) without targets; else the fields of the fused loss's LCEOutput, in order."""
        w = self.head_weight
        if targets is None:
            logits = F.linear(x, w).float()  # (B, T, V): inference only
            if self.cfg.logit_softcap is not None:
                c = self.cfg.logit_softcap
                logits = c * torch.tanh(logits / c)
            return logits
        out = linear_cross_entropy(
            x,
            w,
            targets,
            z_loss=self.cfg.z_loss,
            softcap=self.cfg.logit_softcap,
            impl=self.cfg.loss_impl,
            **loss_kw,
        )
        # a plain tuple, not the dataclass: ZeRO-3 hooks the tensors of a module's outputs to re-gather
        # the weight for backward and cannot see inside a dataclass (GPT.forward rebuilds LCEOutput)
        return tuple(getattr(out, f.name) for f in dataclasses.fields(out))


class GPT(nn.Module):
    supports_kv_cache = True  # forward(..., cache=KVCache()): incremental decoding (evals' sampling)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is null: set it or build the model through the trainer")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # type: ignore[arg-type]
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))  # type: ignore[arg-type]
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)  # type: ignore[arg-type]
        self.lm_head = LMHead(cfg, self.wte.weight if cfg.tie_embeddings else None)
        cos, sin = rope_tables(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_theta)  # type: ignore[operator]
        self.register_buffer("rope_cos", cos, persistent=False)  # (T, head_dim/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ----------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        cfg = self.cfg
        m = cfg.width_mult
        std = cfg.init_std / math.sqrt(m)  # muP: hidden weight variance ~ 1/fan_in
        out_std = std / math.sqrt(2 * cfg.n_layers)  # type: ignore[operator]  # depth-scaled residual outputs
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.w_down.weight")):
                nn.init.normal_(p, 0.0, out_std)
            elif name.startswith("wte"):
                nn.init.normal_(p, 0.0, cfg.init_std)
            elif name.startswith("lm_head") and cfg.mup:
                nn.init.zeros_(p)  # muP readout: zero init is the standard choice
            else:
                nn.init.normal_(p, 0.0, std)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.lm_head.head_weight

    def param_counts(self) -> dict[str, int]:
        """Exact counts: ``non_embedding`` (Kaplan N: blocks + final norm) and ``total``."""
        total = sum(p.numel() for p in self.parameters())
        emb = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("wte", "lm_head")))
        return {"non_embedding": total - emb, "embedding": emb, "total": total}

    def flops_per_token(self, *, with_head: bool = False) -> float:
        return sizes.flops_per_token(
            self.cfg.shape, self.cfg.seq_len, vocab_size=self.cfg.vocab_size if with_head else None
        )

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices only; with muP hidden matrices get lr / m."""
        m = self.cfg.width_mult
        hidden, vector, embed = [], [], []
        for name, p in self.named_parameters():
            if p.dim() < 2:
                vector.append(p)
            elif name.startswith(("wte", "lm_head")):
                embed.append(p)
            else:
                hidden.append(p)
        groups = [
            {
                "params": hidden,
                "lr": lr / m,
                "weight_decay": weight_decay,
                "lr_scale": 1.0 / m,
                "name": "hidden",
            },
            {"params": embed, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0, "name": "embedding"},
            {"params": vector, "lr": lr, "weight_decay": 0.0, "lr_scale": 1.0, "name": "vector"},
        ]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------- forward
    def hidden_states(
        self, idx: torch.Tensor, segment_ids: torch.Tensor | None = None, *, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Final hidden states (B, T, d_model). With ``cache`` (inference), ``idx`` continues the cached
        tokens: positions ``cache.pos ..``, keys and values appended to the cache."""
        B, T = idx.shape
        p0 = cache.pos if cache is not None else 0
        if p0 + T > self.cfg.seq_len:
            where = f" after {p0} cached tokens" if p0 else ""
            raise ValueError(f"sequence length {T}{where} exceeds model.seq_len={self.cfg.seq_len}")
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids with a KV cache: incremental decoding runs one document per row")
        mask = None
        if self.cfg.attn_doc_mask and segment_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
            mask = (same & causal)[:, None]  # (B, 1, T, T)
        x = self.wte(idx)  # (B, T, d_model)
        cos, sin = self.rope_cos[p0 : p0 + T], self.rope_sin[p0 : p0 + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.pos += T
        x = self.norm_f(x)
        if self.cfg.mup:
            x = x / self.cfg.width_mult  # muP readout multiplier 1/m, applied before the LM head
        return x

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        *,
        num_segments: int | None = None,
        ignore_index: int = -100,
        reduction: Literal["mean", "sum", "none"] = "mean",
        cache: KVCache | None = None,
    ) -> LCEOutput | torch.Tensor:
        """``targets is None``: logits (B, T, V). Otherwise the fused loss's ``LCEOutput``.

        ``segment_ids`` (B, T) int64 give each token's sample index within the batch (-1 = none);
        with ``num_segments`` the output carries per-sample NLL sums (``segment_nll``). ``cache``: see
        ``hidden_states`` (incremental decoding; inference only)."""
        x = self.hidden_states(idx, segment_ids, cache=cache)
        if targets is None:
            return self.lm_head(x)
        seg = segment_ids if segment_ids is not None and num_segments is not None else None
        return LCEOutput(
            *self.lm_head(
                x,
                targets,
                ignore_index=ignore_index,
                segment_ids=seg,
                num_segments=num_segments if seg is not None else None,
                reduction=reduction,
            )
        )

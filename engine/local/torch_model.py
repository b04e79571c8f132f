"""A minimal llama-architecture transformer in torch, weight-compatible with llama.cpp.

Rotary embeddings rotate adjacent pairs of each head, as llama.cpp does for
the llama architecture, so GGUF tensors load and export without permuting the
Q and K rows. Requires torch (the optional ``engine[train]`` extra); import
this module only from code that has already checked for it.

A *compact* model (``keep_ids``) gives only the listed token ids their own
embedding and output rows; every other id shares one extra row. The shared
output logit is raised by log(number of ids sharing it) during training, so
when :meth:`LlamaModel.export` expands it back to one row per id, each of
those ids carries exactly the probability it had while training.

Usage::

    model = LlamaModel(cfg)                         # random weights
    model = LlamaModel.from_tensors(cfg, tensors)   # weights read by engine.local.gguf
    logits = model(ids)[:, -1]                      # (batch, vocab)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.local.gguf import LlamaConfig

__all__ = ["LlamaModel"]


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); pairs (0,1), (2,3), ... rotate together, as in llama.cpp's "normal" rope.
    pairs = x.float().unflatten(-1, (-1, 2))  # type: ignore[no-untyped-call]  # torch leaves it untyped
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class _Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, hd
        self.attn_norm = _RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn_q = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.attn_k = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.attn_v = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.attn_output = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        self.ffn_norm = _RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.ffn_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.ffn_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.attn_q(h).view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = self.attn_k(h).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        v = self.attn_v(h).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        # Right padding only, so a causal mask is all the masking needed; grouped K/V heads are
        # shared by their query heads inside the kernel (no repeat_interleave copies).
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        x = x + self.attn_output(a.transpose(1, 2).reshape(b, t, -1))
        return self._ffn(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffn_norm(x)
        out: torch.Tensor = x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))
        return out

    def forward_shared(
        self, x: torch.Tensor, p: int, rest: tuple[int, int], cos: torch.Tensor, sin: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x``: (p + b*t, dim), the shared prefix's p tokens once, then b rows of t tokens each."""
        b, t = rest
        gqa = self.n_kv != self.n_heads
        h = self.attn_norm(x)
        q, k, v = self.attn_q(h), self.attn_k(h), self.attn_v(h)

        def split(z: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
            prefix = z[:p].view(1, p, heads, self.hd).transpose(1, 2)
            rows = z[p:].view(b, t, heads, self.hd).transpose(1, 2)
            return prefix, rows

        (qp, qr), (kp, kr), (vp, vr) = split(q, self.n_heads), split(k, self.n_kv), split(v, self.n_kv)
        qp, kp = _rope(qp, cos[:p], sin[:p]), _rope(kp, cos[:p], sin[:p])
        qr, kr = _rope(qr, cos[p:], sin[p:]), _rope(kr, cos[p:], sin[p:])
        ap = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
        # Each row attends to the prefix (computed once, broadcast) and causally to itself.
        keys = torch.cat((kp.expand(b, -1, -1, -1), kr), dim=2)
        values = torch.cat((vp.expand(b, -1, -1, -1), vr), dim=2)
        ar = F.scaled_dot_product_attention(qr, keys, values, attn_mask=mask, enable_gqa=gqa)
        a = torch.cat((ap.transpose(1, 2).reshape(p, -1), ar.transpose(1, 2).reshape(b * t, -1)))
        return self._ffn(x + self.attn_output(a))


class LlamaModel(nn.Module):
    """Llama transformer; ``forward(ids)`` gives logits over the (compact) vocabulary.

    Usage: ``LlamaModel(cfg, keep_ids=[1, 2, 198, 4093])(torch.tensor([[1, 4093]]))``
    """

    id_map: torch.Tensor
    inv_freq: torch.Tensor

    def __init__(self, cfg: LlamaConfig, *, keep_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if keep_ids is None:
            rows = cfg.vocab_size
            self.register_buffer("id_map", torch.empty(0, dtype=torch.long), persistent=False)
            self.keep_ids: list[int] | None = None
            self.shared_offset = 0.0
        else:
            kept = sorted(set(keep_ids))
            rows = len(kept) + 1
            id_map = torch.full((cfg.vocab_size,), len(kept), dtype=torch.long)
            id_map[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
            self.register_buffer("id_map", id_map, persistent=False)
            self.keep_ids = kept
            shared = cfg.vocab_size - len(kept)
            self.shared_offset = math.log(shared) if shared > 0 else -1e4
        self.token_embd = nn.Embedding(rows, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.output_norm = _RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tied_embeddings else nn.Linear(cfg.dim, rows, bias=False)
        nn.init.normal_(self.token_embd.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    @classmethod
    def from_tensors(cls, cfg: LlamaConfig, tensors: Mapping[str, np.ndarray]) -> LlamaModel:
        """A full-vocabulary model holding GGUF-named float32 tensors.

        Usage: ``LlamaModel.from_tensors(m.config, m.tensors)``
        """
        model = cls(cfg)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(torch.tensor(np.asarray(tensors[_gguf_name(name)], dtype=np.float32)))
        return model

    def compact(self, ids: torch.Tensor) -> torch.Tensor:
        """Map vocabulary ids to this model's rows (identity for a full model)."""
        return ids if self.keep_ids is None else self.id_map[ids]

    def _rotary(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # (t, head_dim/2) per call: a few thousand numbers, far below one layer's work.
        angles = torch.outer(torch.arange(t, device=device, dtype=torch.float32), self.inv_freq)
        return angles.cos(), angles.sin()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states, (batch, time, dim), for vocabulary ids."""
        cos, sin = self._rotary(ids.shape[1], ids.device)
        x = self.token_embd(self.compact(ids))
        for block in self.blocks:
            x = block(x, cos, sin)
        normed: torch.Tensor = self.output_norm(x)
        return normed

    def hidden_shared(self, prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``hidden(cat(prefix, row))[p:]`` for every row, the prefix computed once for the batch.

        ``prefix``: (p,) ids every row starts with; ``rows``: (batch, time) ids after it. The same
        numbers as :meth:`hidden` on the full rows (up to rounding), with p x (batch - 1) fewer
        positions through every layer. Usage: ``model.hidden_shared(ids[0, :p], ids[:, p:])``
        """
        p, (b, t) = prefix.shape[0], rows.shape
        cos, sin = self._rotary(p + t, rows.device)
        x = self.token_embd(self.compact(torch.cat((prefix, rows.reshape(-1)))))
        mask = torch.ones((t, p + t), dtype=torch.bool, device=rows.device)
        mask[:, p:] = torch.ones((t, t), dtype=torch.bool, device=rows.device).tril()
        for block in self.blocks:
            x = cast(_Block, block).forward_shared(x, p, (b, t), cos, sin, mask)
        normed: torch.Tensor = self.output_norm(x[p:].view(b, t, -1))
        return normed

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over this model's rows; a compact model's last (shared) logit includes its offset."""
        weight = self.token_embd.weight if self.output is None else self.output.weight
        out = F.linear(hidden, weight)
        if self.keep_ids is not None:
            out = torch.cat((out[..., :-1], out[..., -1:] + self.shared_offset), dim=-1)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits for every position, (batch, time, rows)."""
        return self.logits(self.hidden(ids))

    def export(self) -> dict[str, np.ndarray]:
        """GGUF-named float32 tensors over the full vocabulary, ready for ``write_gguf``.

        Usage: ``write_gguf(path, config=model.cfg, tensors=model.export(), ...)``
        """
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, param in self.named_parameters():
                value = param.detach().float()
                if name in ("token_embd.weight", "output.weight") and self.keep_ids is not None:
                    value = value[self.id_map]
                out[_gguf_name(name)] = value.numpy().copy()
        return out


def _gguf_name(param: str) -> str:
    if param.startswith("blocks."):
        _, index, rest = param.split(".", 2)
        return f"blk.{index}.{rest}"
    if param == "output.weight" or param.startswith(("token_embd.", "output_norm.")):
        return param
    raise KeyError(param)

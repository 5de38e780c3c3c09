"""HSTU, the block of Meta's generative recommenders (Zhai et al., ICML 2024, eqs. 1-3).

Written after ``generative_recommenders/research/modeling/sequential/hstu.py`` (Meta's reference
code). One block replaces attention + feed-forward::

    X~         = LayerNorm(X)                                 pre-norm, no affine parameters
    U, V, Q, K = Split( SiLU( X~ W_uvqk ) )                   eq. 1: ONE projection, SiLU on all four
    A          = SiLU( Q K^T + rab^{p,t} ) / n  (masked)      eq. 2: pointwise, NO softmax, n = max length
    Y          = X + f2( Dropout( LayerNorm(A V) * U ) )      eq. 3: gate by U, output projection, residual

``rab^{p,t}`` is the relative attention bias: a learned scalar per relative position ``j - i``
plus a learned scalar per log-bucket of the time gap ``t_next(i) - t_j`` (seconds), where
``t_next(i)`` is the timestamp of the token after query ``i`` (the last one reuses its own).
``attention="softmax"`` swaps eq. 2 for ``softmax(Q K^T / sqrt(d_qk) + rab)`` (ablation).

Shapes: B batch, N tokens (queries Nq, keys Nk), D model width, H heads, d per-head width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


def time_buckets(dt_seconds: torch.Tensor, num_buckets: int = 128) -> torch.Tensor:
    """Meta's log bucketing: ``clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, num_buckets)``."""
    dt = dt_seconds.abs().clamp(min=1).float()
    return (torch.log(dt) / 0.301).floor().long().clamp(0, num_buckets)


def next_timestamps(t: torch.Tensor) -> torch.Tensor:
    """``t_next(i) = t[i + 1]``, the last position keeps its own timestamp.  ``[B, N] -> [B, N]``."""
    return torch.cat([t[:, 1:], t[:, -1:]], dim=1)


def causal_mask(n: int, device=None) -> torch.Tensor:
    """Lower-triangular ``[n, n]`` boolean mask, diagonal included (query i sees keys j <= i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class RelativeBias(nn.Module):
    """rab^{p,t}: ``w_pos[j - i + max_len - 1] + w_ts[bucket(t_q(i) - t_k(j))]``, shared by the heads."""

    def __init__(self, max_len: int, num_buckets: int = 128, position: bool = True, time: bool = True):
        super().__init__()
        self.max_len, self.num_buckets, self.position, self.time = max_len, num_buckets, position, time
        self.pos_w = nn.Parameter(torch.empty(2 * max_len - 1).normal_(0, 0.02))
        self.ts_w = nn.Parameter(torch.empty(num_buckets + 1).normal_(0, 0.02))

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor, q_time: torch.Tensor | None,
                k_time: torch.Tensor | None) -> torch.Tensor:
        """``q_pos [Nq]``, ``k_pos [Nk]`` (ints < max_len), times ``[B, Nq]``, ``[B, Nk]`` -> ``[B|1, Nq, Nk]``."""
        bias = q_pos.new_zeros((1, len(q_pos), len(k_pos)), dtype=self.pos_w.dtype)
        if self.position:
            bias = bias + self.pos_w[k_pos[None, :] - q_pos[:, None] + self.max_len - 1].unsqueeze(0)
        if self.time and q_time is not None:
            bias = bias + self.ts_w[time_buckets(q_time[:, :, None] - k_time[:, None, :], self.num_buckets)]
        return bias


def attention_weights(scores: torch.Tensor, mask: torch.Tensor, kind: str, n: int) -> torch.Tensor:
    """Eq. 2's normaliser on ``scores [B, H, Nq, Nk]`` (bias already added) under a boolean mask.

    ``silu``: SiLU(scores) / n, zero where masked (each weight is independent: no competition
    between keys). ``softmax``: softmax over the allowed keys (scores already scaled by 1/sqrt(d))."""
    if kind == "silu":
        return F.silu(scores) / n * mask
    if kind == "softmax":
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    raise ValueError(f"attention must be 'silu' or 'softmax', got {kind!r}")


class HSTUBlock(nn.Module):
    """One HSTU layer (eqs. 1-3). ``forward`` runs ordinary (masked) self-attention over a token
    sequence; the pieces (:meth:`project`, :meth:`scores`, :meth:`output`) are public so that a
    model with its own attention pattern (DFGR's two flows) reuses the same weights and maths."""

    def __init__(self, dim: int, num_heads: int = 1, qk_dim: int | None = None, v_dim: int | None = None,
                 max_len: int = 256, attention: str = "silu", position_bias: bool = True, time_bias: bool = True,
                 dropout: float = 0.0, num_buckets: int = 128):
        super().__init__()
        if attention not in ("silu", "softmax"):
            raise ValueError(f"attention must be 'silu' or 'softmax', got {attention!r}")
        self.dim, self.heads, self.attention, self.max_len = dim, num_heads, attention, max_len
        self.qk_dim = qk_dim or dim // num_heads
        self.v_dim = v_dim or dim // num_heads
        H = num_heads
        # f1: one matrix d -> [U | V | Q | K] (Meta: the parameter '_uvqk', no bias, N(0, 0.02)).
        self.uvqk = nn.Parameter(torch.empty(dim, 2 * H * self.v_dim + 2 * H * self.qk_dim).normal_(0, 0.02))
        self.out = nn.Linear(H * self.v_dim, dim)  # f2
        self.dropout = nn.Dropout(dropout)
        self.rab = RelativeBias(max_len, num_buckets, position_bias, time_bias)

    # -- eq. 1 ---------------------------------------------------------------------------------
    def project(self, x: torch.Tensor):
        """``x [B, N, D]`` -> U ``[B, N, H*dv]``, V ``[B, N, H, dv]``, Q, K ``[B, N, H, dqk]``."""
        B, N, _ = x.shape
        h = F.silu(F.layer_norm(x, (self.dim,), eps=LN_EPS) @ self.uvqk)
        Hv, Hq = self.heads * self.v_dim, self.heads * self.qk_dim
        u, v, q, k = torch.split(h, [Hv, Hv, Hq, Hq], dim=-1)
        return (u, v.view(B, N, self.heads, self.v_dim), q.view(B, N, self.heads, self.qk_dim),
                k.view(B, N, self.heads, self.qk_dim))

    # -- eq. 2 ---------------------------------------------------------------------------------
    def scores(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``Q K^T (/ sqrt(d) for softmax) + rab``: ``[B, H, Nq, Nk]``."""
        s = torch.einsum("bnhd,bmhd->bhnm", q, k)
        if self.attention == "softmax":
            s = s / math.sqrt(self.qk_dim)
        return s + bias.unsqueeze(1)

    def weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return attention_weights(scores, mask, self.attention, self.max_len)

    # -- eq. 3 ---------------------------------------------------------------------------------
    def output(self, x: torch.Tensor, av: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x + f2(Dropout(LayerNorm(AV) * U))``; ``av``, ``u``: ``[B, N, H*dv]``."""
        return x + self.out(self.dropout(F.layer_norm(av, (av.shape[-1],), eps=LN_EPS) * u))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, query_times: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, D]``; ``timestamps [B, N]`` (seconds); ``mask [N, N]`` or ``[B, N, N]`` boolean,
        True = query row may attend to key column (default: causal); ``positions [N]`` (default
        0..N-1); ``query_times [B, N]`` (default: :func:`next_timestamps`)."""
        B, N, _ = x.shape
        mask = causal_mask(N, x.device) if mask is None else mask
        pos = torch.arange(N, device=x.device) if positions is None else positions
        if timestamps is not None and query_times is None:
            query_times = next_timestamps(timestamps)
        u, v, q, k = self.project(x)
        a = self.weights(self.scores(q, k, self.rab(pos, pos, query_times, timestamps)),
                         mask.unsqueeze(-3) if mask.dim() == 3 else mask)  # [B, H, N, N]
        av = torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(B, N, -1)
        return self.output(x, av, u)

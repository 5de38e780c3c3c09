"""DIN: Deep Interest Network (Zhou et al., KDD 2018), and the pooling baselines as a flag.

A user's history holds several interests; only some matter for a given candidate. DIN weights
each behaviour by its relevance to the candidate (the *local activation unit*) before pooling,
so the user vector changes with the candidate:

    v_U(A) = sum_j a(e_j, v_A) e_j       (eq. 3; a = MLP([e_j, v_A, e_j - v_A, e_j * v_A]), no softmax)

``attention`` picks how the history becomes one vector:

* ``"din"``:     the activation unit above (Dice or PReLU in it and in the top MLP);
* ``"softmax"``: scaled dot-product target attention (:class:`ctrlib.layers.TargetAttention`);
* ``"mean"`` / ``"sum"``: plain pooling over the real behaviours, the Embedding&MLP base model.

A behaviour is described by several ids (item, category): each history sequence is paired with
the candidate feature that shares its embedding table (``hist_item_id`` <-> ``item_id``), and
the pair embeddings are concatenated, so keys and query are ``P * D`` wide.
"""
from __future__ import annotations

import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import (ActivationMLP, ActivationUnit, BehaviourEmbedding, TargetAttention, attention_pooling,
                           eval_mode, masked_mean)

ATTENTIONS = ("din", "softmax", "mean", "sum")


class DIN(nn.Module):
    """logit = MLP([fields, pooled history])  with the pooling chosen by ``attention``.
    ``activation`` is the top MLP's and, unless ``attention_activation`` is given, the activation unit's.
    Embeddings start at N(0, ``init_std``) (DeepCTR's 1e-4 by default)."""

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(200, 80), attention: str = "din", pairs=None,
                 attention_hidden=(36,), activation: str = "dice", dropout: float = 0.0, num_heads: int = 1,
                 attention_activation: str | None = None, init_std: float = 1e-4):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.schema, self.attention_kind = schema, attention
        self.embedding = BehaviourEmbedding(schema, embedding_dim, pairs, init_std)
        d = self.embedding.width
        if attention == "din":
            self.attention = ActivationUnit(d, attention_hidden, attention_activation or activation)
        elif attention == "softmax":
            self.attention = TargetAttention(d, d, d, num_heads)
        else:
            self.attention = None
        in_dim = self.embedding.num_fields * embedding_dim + d
        self.mlp = ActivationMLP(in_dim, hidden, activation, out_dim=1, dropout=dropout)

    def pool(self, query, keys, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The user-interest vector ``[B, P*D]`` and the weight of each behaviour ``[B, L]``."""
        m = mask.to(keys.dtype)
        if self.attention_kind == "din":
            w = self.attention(query, keys, mask)
        elif self.attention_kind == "softmax":
            pooled, w = self.attention(query, keys, mask)
            return pooled, w.mean(1)
        elif self.attention_kind == "mean":
            return masked_mean(keys, mask), m / m.sum(1, keepdim=True).clamp(min=1)  # weights: for display
        else:
            w = m
        return attention_pooling(w, keys), w

    @torch.no_grad()
    def attention_weights(self, batch) -> torch.Tensor:
        """The weight each behaviour gets for the batch's candidates, ``[B, L]`` (0 at padding)."""
        with eval_mode(self):
            _, query, keys, mask = self.embedding(batch)
            return self.pool(query, keys, mask)[1]

    def forward(self, batch):
        fields, query, keys, mask = self.embedding(batch)     # [B, F, D], [B, d], [B, L, d], [B, L]
        pooled, _ = self.pool(query, keys, mask)               # [B, d]
        return self.mlp(torch.cat([fields.flatten(1), pooled], dim=1)).squeeze(-1)  # [B]


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
from ctrlib.layers import (ActivationMLP, ActivationUnit, FeatureEmbedding, TargetAttention, attention_pooling,
                           masked_mean)

ATTENTIONS = ("din", "softmax", "mean", "sum")


def behaviour_pairs(schema: Schema, pairs=None) -> list[tuple[str, str]]:
    """(candidate feature, history sequence) pairs: given, or every sequence whose embedding table
    is shared with a categorical feature. All paired sequences must have the same length."""
    if pairs is None:
        by_table = {f.table: f.name for f in schema.categorical}
        pairs = [(by_table[s.table], s.name) for s in schema.sequences if s.table in by_table]
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("no behaviour sequence shares an embedding table with a candidate feature; "
                         "declare Sequence(..., embedding='item_id') or pass pairs")
    lengths = {schema[s].max_len for _, s in pairs}
    if len(lengths) > 1:
        raise ValueError(f"paired sequences must have one length, got {lengths}")
    return pairs


class BehaviourEmbedding(nn.Module):
    """The embeddings a behaviour model reads, from ONE table (a candidate and its history share
    rows): the other fields ``[B, F, D]`` (candidate, profile, context; unpaired sequences
    mean-pooled), the candidate query ``[B, P*D]``, the history keys ``[B, L, P*D]`` (zero at
    padding) and the history mask ``[B, L]``."""

    def __init__(self, schema: Schema, dim: int, pairs=None, init_std: float = 1e-4):
        super().__init__()
        self.pairs = behaviour_pairs(schema, pairs)
        paired = {s for _, s in self.pairs}
        self.table = FeatureEmbedding(schema, dim, init_std, pool_sequences=False)
        self.unpaired = [s.name for s in schema.sequences if s.name not in paired]
        self.width = len(self.pairs) * dim

    @property
    def num_fields(self) -> int:
        return self.table.num_fields + len(self.unpaired)

    def forward(self, batch):
        fields = self.table(batch)                                                               # [B, F, D]
        if self.unpaired:
            pooled = [masked_mean(*self.table.sequence(batch, s)).unsqueeze(1) for s in self.unpaired]
            fields = torch.cat([fields, *pooled], dim=1)
        query = torch.cat([self.table.lookup(t, batch[t]) for t, _ in self.pairs], dim=-1)       # [B, P*D]
        seqs = [self.table.sequence(batch, s) for _, s in self.pairs]
        keys = torch.cat([e for e, _ in seqs], dim=-1)                                           # [B, L, P*D]
        return fields, query, keys, seqs[0][1]


class DIN(nn.Module):
    """logit = MLP([fields, pooled history])  with the pooling chosen by ``attention``.
    ``activation`` is the top MLP's and, unless ``attention_activation`` is given, the activation unit's.
    Embeddings start at N(0, ``init_std``) (DeepCTR's 1e-4 by default)."""

    def __init__(self, schema: Schema, embedding_dim: int = 16, attention: str = "din", pairs=None,
                 attention_hidden=(36,), activation: str = "dice", hidden=(200, 80), dropout: float = 0.0,
                 num_heads: int = 1, attention_activation: str | None = None, init_std: float = 1e-4):
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
            w = m / m.sum(1, keepdim=True).clamp(min=1)
        else:
            w = m
        return attention_pooling(w, keys), w

    @torch.no_grad()
    def attention_weights(self, batch) -> torch.Tensor:
        """The weight each behaviour gets for the batch's candidates, ``[B, L]`` (0 at padding)."""
        was = self.training
        self.eval()
        _, query, keys, mask = self.embedding(batch)
        w = self.pool(query, keys, mask)[1]
        self.train(was)
        return w

    def forward(self, batch):
        fields, query, keys, mask = self.embedding(batch)     # [B, F, D], [B, d], [B, L, d], [B, L]
        pooled, _ = self.pool(query, keys, mask)               # [B, d]
        return self.mlp(torch.cat([fields.flatten(1), pooled], dim=1)).squeeze(-1)  # [B]


__all__ = ["DIN", "BehaviourEmbedding", "behaviour_pairs", "masked_mean"]

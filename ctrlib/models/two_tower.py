"""Two-tower (vector-product) model, the pre-ranking workhorse (DSSM, Huang et al. 2013; YouTube
DNN, Covington et al. 2016).

    u = MLP_user([user profile, context, mean-pooled history])    v = MLP_item([item features])
    logit = <u, v> + b

The candidate meets the user only in the final dot product: item vectors can be computed offline
and a request costs one user-tower pass plus one dot product per candidate. The price is that the
user vector cannot depend on the candidate (no target attention, no user x item crosses below
the top).
"""
from __future__ import annotations

import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, FeatureEmbedding, masked_mean


class TwoTower(nn.Module):
    """``item_features`` (required): the candidate's fields; every other feature (sequences included)
    feeds the user tower. Sequences are mean-pooled over their real positions. ``hidden``: each
    tower's MLP widths, ``out_dim``: the size of the user and item vectors."""

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(128,), out_dim: int = 32,
                 dropout: float = 0.0, *, item_features):
        super().__init__()
        self.schema = schema
        item_features = list(item_features)
        for name in item_features:
            schema[name]  # a clear KeyError on a typo
        self.embedding = FeatureEmbedding(schema, embedding_dim)  # fields: categorical, numeric, pooled sequences
        names = ([f.name for f in schema.categorical] + [f.name for f in schema.numeric for _ in range(f.dim)]
                 + [f.name for f in schema.sequences])
        item_idx = [i for i, n in enumerate(names) if n in item_features]
        user_idx = [i for i, n in enumerate(names) if n not in item_features]
        if not item_idx or not user_idx:
            raise ValueError("both towers need at least one feature")
        self.item_features = [n for n in dict.fromkeys(names) if n in item_features]
        self.user_features = [n for n in dict.fromkeys(names) if n not in item_features]
        self.register_buffer("item_idx", torch.tensor(item_idx), persistent=False)
        self.register_buffer("user_idx", torch.tensor(user_idx), persistent=False)
        self.user_tower = MLP(len(user_idx) * embedding_dim, hidden, out_dim, dropout)
        self.item_tower = MLP(len(item_idx) * embedding_dim, hidden, out_dim, dropout)
        self.bias = nn.Parameter(torch.zeros(()))

    def towers(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item vectors ``[B, out_dim]`` each."""
        e = self.embedding(batch)                                     # [B, F, D]
        u = self.user_tower(e[:, self.user_idx].flatten(1))           # [B, K]
        v = self.item_tower(e[:, self.item_idx].flatten(1))           # [B, K]
        return u, v

    def _fields(self, batch, names) -> torch.Tensor:
        """The named features' field embeddings only, in the embedding's field order, flattened
        ``[B, F' * D]``: the same numbers as ``self.embedding(batch)[:, idx]``."""
        e = self.embedding
        parts = [e.lookup(n, batch[n]).unsqueeze(1) for n in e.categorical if n in names]  # [B, 1, D] each
        start = 0
        for f in self.schema.numeric:
            if f.name in names:
                values = batch[f.name].reshape(len(batch[f.name]), -1)                 # [B, dim]
                parts.append(values.unsqueeze(-1) * e.numeric_weight[start:start + f.dim])  # [B, dim, D]
            start += f.dim
        parts += [masked_mean(*e.sequence(batch, n)).unsqueeze(1) for n in e.sequences if n in names]
        return torch.cat(parts, dim=1).flatten(1)

    def user_vector(self, batch) -> torch.Tensor:
        """u ``[B, K]`` from the user features alone (a batch without item features): served per request."""
        return self.user_tower(self._fields(batch, self.user_features))

    def item_vector(self, batch) -> torch.Tensor:
        """v ``[B, K]`` from the item features alone: computed offline for the whole catalogue."""
        return self.item_tower(self._fields(batch, self.item_features))

    def forward(self, batch):
        u, v = self.towers(batch)
        return (u * v).sum(-1) + self.bias                            # [B]

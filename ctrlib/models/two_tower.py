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
from ctrlib.layers import MLP, FeatureEmbedding


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

    def forward(self, batch):
        u, v = self.towers(batch)
        return (u * v).sum(-1) + self.bias                            # [B]

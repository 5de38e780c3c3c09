"""DLRM (Naumov et al., 2019): dense features through a bottom MLP, pairwise dot products
between all embedding vectors, then a top MLP over [dense vector, dot products]."""
import torch
from torch import nn

from ctrlib.data.schema import Numeric, Schema
from ctrlib.layers import MLP, FeatureEmbedding, dot_interaction


class DLRM(nn.Module):
    """``hidden``: the top MLP's widths; ``bottom_hidden``: the bottom MLP's (dense features)."""

    def __init__(self, schema: Schema, embedding_dim: int = 10, hidden=(400, 400, 400), bottom_hidden=(64,),
                 dropout: float = 0.0):
        super().__init__()
        self.schema = schema
        sparse = Schema(tuple(f for f in schema.features if not isinstance(f, Numeric)),
                        schema.labels, schema.extras)
        self.embedding = FeatureEmbedding(sparse, embedding_dim)
        self.dense = [f.name for f in schema.numeric]
        n_dense = sum(f.dim for f in schema.numeric)
        # The bottom MLP maps the dense features to one more embedding-sized vector.
        self.bottom = MLP(n_dense, bottom_hidden, embedding_dim) if n_dense else None
        n_vectors = self.embedding.num_fields + (1 if n_dense else 0)
        n_dots = n_vectors * (n_vectors - 1) // 2
        self.mlp = MLP(n_dots + (embedding_dim if n_dense else 0), hidden, 1, dropout)  # the top MLP

    def forward(self, batch):
        e = self.embedding(batch)  # [B, F, D]
        parts = []
        if self.bottom is not None:
            dense = self.bottom(torch.cat([batch[n].reshape(len(batch[n]), -1) for n in self.dense], dim=1))
            e = torch.cat([dense.unsqueeze(1), e], dim=1)  # [B, F+1, D]
            parts.append(dense)
        parts.append(dot_interaction(e))  # [B, F'(F'-1)/2]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)  # [B]

"""Factorization machine (Rendle, ICDM 2010): every pair of fields interacts through a dot
product of low-dimensional factors, so a cross is learned even for pairs never seen together."""
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import FeatureEmbedding, LinearTerm, fm_interaction


class FM(nn.Module):
    """logit = b + sum_f w_f + sum_{i<j} <v_i, v_j>   (eq. 1 of the paper)"""

    def __init__(self, schema: Schema, embedding_dim: int = 10):
        super().__init__()
        self.schema = schema
        self.linear = LinearTerm(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)

    def forward(self, batch):
        return self.linear(batch) + fm_interaction(self.embedding(batch))  # [B]

"""Deep & Cross Network: DCN (Wang et al., ADKDD 2017) and DCN-V2 (Wang et al., WWW 2021).

The cross network builds explicit feature crosses whose degree grows by one per layer; an MLP
runs beside it (parallel) or on top of it (stacked). ``version`` picks the cross layer.
"""
import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, CrossNet, FeatureEmbedding


class DCN(nn.Module):
    """``hidden=()`` drops the MLP (cross network only)."""

    def __init__(self, schema: Schema, embedding_dim: int = 10, hidden=(400, 400, 400), cross_layers: int = 3,
                 dropout: float = 0.0, version: int = 2, low_rank: int | None = None, structure: str = "parallel",
                 batch_norm: bool = False):
        super().__init__()
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        self.schema, self.structure = schema, structure
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        d = self.embedding.num_fields * embedding_dim
        self.cross = CrossNet(d, cross_layers, version, low_rank)
        self.mlp = MLP(d, hidden, None, dropout, batch_norm=batch_norm) if hidden else None
        mlp_out = self.mlp.out_dim if self.mlp is not None else 0
        self.head = nn.Linear(mlp_out if structure == "stacked" and self.mlp else d + mlp_out, 1)

    def forward(self, batch):
        x0 = self.embedding(batch).flatten(1)  # [B, F*D]
        x = self.cross(x0)  # [B, F*D]
        if self.mlp is None:
            h = x
        elif self.structure == "stacked":
            h = self.mlp(x)
        else:
            h = torch.cat([x, self.mlp(x0)], dim=1)
        return self.head(h).squeeze(-1)  # [B]

"""Shared building blocks. Shapes: B = batch, F = fields, D = embedding size, L = sequence length."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema


class FeatureEmbedding(nn.Module):
    """Every id feature's embedding, looked up in ONE table with a row offset per embedding table.

    Features that share a table (``Categorical("item_id")`` and ``Sequence("hist_item_id",
    embedding="item_id")``) share rows. ``forward`` returns the field embeddings ``[B, F, D]``:
    categorical fields, then numeric fields (value x a learned vector per field), then
    sequences mean-pooled over their non-padding positions.
    Rows are initialised from N(0, ``init_std``), as in FuxiCTR and DeepCTR (N(0, 1e-4)).
    """

    def __init__(self, schema: Schema, dim: int, init_std: float = 1e-4, pool_sequences: bool = True):
        super().__init__()
        self.schema, self.dim, self.pool_sequences = schema, dim, pool_sequences
        self.table_offsets: dict[str, int] = {}
        rows = 0
        for table, size in schema.tables.items():
            self.table_offsets[table] = rows
            rows += size
        self.weight = nn.Parameter(torch.randn(max(rows, 1), dim) * init_std)
        self.categorical = [f.name for f in schema.categorical]
        self.register_buffer("cat_offsets", torch.tensor(
            [self.table_offsets[f.table] for f in schema.categorical], dtype=torch.long), persistent=False)
        self.numeric = [f.name for f in schema.numeric]
        n_numeric = sum(f.dim for f in schema.numeric)
        self.numeric_weight = nn.Parameter(torch.randn(n_numeric, dim) * init_std) if n_numeric else None
        self.sequences = [f.name for f in schema.sequences] if pool_sequences else []

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + sum(f.dim for f in self.schema.numeric) + len(self.sequences)

    def lookup(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``ids`` (any shape) in ``feature``'s table: ``[*ids.shape, D]``."""
        return F.embedding(ids + self.table_offsets[self.schema[feature].table], self.weight)

    def sequence(self, batch: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence feature's embeddings ``[B, L, D]`` (zero at padding) and its mask ``[B, L]``."""
        ids = batch[name]
        mask = ids > 0
        return self.lookup(name, ids) * mask.unsqueeze(-1), mask

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.categorical:
            ids = torch.stack([batch[n] for n in self.categorical], dim=1) + self.cat_offsets  # [B, Fc]
            parts.append(F.embedding(ids, self.weight))  # [B, Fc, D]
        if self.numeric:
            values = torch.cat([batch[n].reshape(len(batch[n]), -1) for n in self.numeric], dim=1)  # [B, Fn]
            parts.append(values.unsqueeze(-1) * self.numeric_weight)  # [B, Fn, D]
        for name in self.sequences:
            emb, mask = self.sequence(batch, name)
            pooled = emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # mean over real positions
            parts.append(pooled.unsqueeze(1))  # [B, 1, D]
        return torch.cat(parts, dim=1)


class LinearTerm(nn.Module):
    """The order-1 term: a bias plus one learned weight per id (and per numeric value)."""

    def __init__(self, schema: Schema, init_std: float = 1e-4):
        super().__init__()
        self.weights = FeatureEmbedding(schema, 1, init_std)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        return self.weights(batch).sum(dim=(1, 2)) + self.bias  # [B]


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then an optional output layer."""

    def __init__(self, in_dim: int, hidden=(400, 400, 400), out_dim: int | None = 1, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.ReLU, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim if out_dim is not None else in_dim
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fm_interaction(e: torch.Tensor) -> torch.Tensor:
    """The FM pairwise term  sum_{i<j} <e_i, e_j>  in O(F D):
    0.5 * sum_d [(sum_i e_id)^2 - sum_i e_id^2]  (Rendle 2010, eq. 5).  ``[B, F, D] -> [B]``."""
    square_of_sum = e.sum(dim=1).pow(2)  # [B, D]
    sum_of_square = e.pow(2).sum(dim=1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNet(nn.Module):
    """DCN's cross network. ``x0, x: [B, d]``.

    version 1 (Wang et al. 2017, eq. 3):  x_{l+1} = x0 * (x_l . w_l) + b_l + x_l   (a rank-1 map)
    version 2 (Wang et al. 2021, eq. 1):  x_{l+1} = x0 * (W_l x_l + b_l) + x_l    (full rank W_l,
    or W_l = U_l V_l^T of rank ``low_rank``, the paper's cost-saving variant).
    Each layer raises the polynomial degree of the crosses by one.
    """

    def __init__(self, dim: int, num_layers: int = 3, version: int = 2, low_rank: int | None = None):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version}")
        self.version = version

        def weight():
            if version == 1:
                return nn.Linear(dim, 1, bias=False)
            if low_rank:
                return nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim, bias=False))
            return nn.Linear(dim, dim, bias=False)

        self.weights = nn.ModuleList(weight() for _ in range(num_layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            if self.version == 1:
                x = x0 * w(x) + b + x  # w(x) = x_l . w_l is [B, 1], one scalar per row
            else:
                x = x0 * (w(x) + b) + x  # w(x) = W_l x_l is [B, d]
        return x


def dot_interaction(e: torch.Tensor) -> torch.Tensor:
    """DLRM's pairwise dot products <e_i, e_j> for i < j.  ``[B, F, D] -> [B, F(F-1)/2]``."""
    n = e.shape[1]
    gram = e @ e.transpose(1, 2)  # [B, F, F]
    i, j = torch.triu_indices(n, n, offset=1, device=e.device)
    return gram[:, i, j]

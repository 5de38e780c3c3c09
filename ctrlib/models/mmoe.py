"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018), a multi-task baseline of the CVR chapter.

E expert MLPs read the same input h = flatten(X_0); each task t mixes them with its own gate,

    f_t(h) = sum_e softmax(W_t h)_e  expert_e(h),      logit_t = tower_t(f_t(h))      (eq. 5-6)

so tasks share experts as much as their gates choose. The input is the field list X_0 of
:class:`ctrlib.layers.FieldTokens`, the same as DHEN's (the same features and sequence encoders).
"""
from __future__ import annotations

import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, FieldTokens


class MMoE(nn.Module):
    """``hidden``: each task tower's widths; ``expert_hidden``: each expert's widths."""

    def __init__(self, schema: Schema, embedding_dim: int = 8, hidden=(32,), num_experts: int = 4,
                 expert_hidden=(64,)):
        super().__init__()
        self.schema = schema
        self.fields = FieldTokens(schema, embedding_dim)
        d = self.fields.num_fields * embedding_dim
        self.experts = nn.ModuleList(MLP(d, expert_hidden, None) for _ in range(num_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(d, num_experts) for t in schema.labels})
        self.towers = nn.ModuleDict({t: MLP(self.experts[0].out_dim, hidden, 1) for t in schema.labels})

    def forward(self, batch):
        h = self.fields(batch)[0].flatten(1)                                    # [B, m D]
        experts = torch.stack([e(h) for e in self.experts], dim=1)              # [B, E, H]
        out = {}
        for t, gate in self.gates.items():
            g = torch.softmax(gate(h), dim=-1)                                  # [B, E]
            out[t] = self.towers[t](torch.einsum("be,beh->bh", g, experts)).squeeze(-1)  # [B]
        return out[self.schema.label] if len(out) == 1 else out

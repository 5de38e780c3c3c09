"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020), a multi-task baseline of the CVR chapter.

Each extraction level (a CGC, Customized Gate Control) has shared experts and experts of each task
t; task t's gate mixes its own and the shared experts, and (below the last level) a shared gate
mixes all experts for the next level's shared input:

    g_t(x) = softmax(W_t x_t) [E_t(x_t); E_s(x_s)],   g_s(x) = softmax(W_s x_s) [E_1; ...; E_T; E_s]  (eq. 4-6)

logit_t = tower_t(g_t) of the last level. The input is DHEN's field list X_0
(:class:`ctrlib.layers.FieldTokens`), the same features and sequence encoders as every arm.
"""
from __future__ import annotations

import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, FieldTokens


class PLE(nn.Module):
    """``hidden``: each task tower's widths; ``expert_hidden``: each expert's widths (one layer of
    experts per extraction level); ``levels`` extraction levels."""

    def __init__(self, schema: Schema, embedding_dim: int = 8, hidden=(32,), levels: int = 2,
                 shared_experts: int = 2, task_experts: int = 1, expert_hidden=(64,)):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.schema, self.tasks = schema, list(schema.labels)
        self.fields = FieldTokens(schema, embedding_dim)
        d = self.fields.num_fields * embedding_dim
        self.levels = nn.ModuleList()
        for level in range(levels):
            last = level == levels - 1
            counts = {"shared": shared_experts, **{t: task_experts for t in self.tasks}}
            groups = {g: nn.ModuleList(MLP(d, expert_hidden, None) for _ in range(n)) for g, n in counts.items()}
            gates = {t: nn.Linear(d, task_experts + shared_experts) for t in self.tasks}
            if not last:
                gates["shared"] = nn.Linear(d, task_experts * len(self.tasks) + shared_experts)
            self.levels.append(nn.ModuleDict({"experts": nn.ModuleDict(groups), "gates": nn.ModuleDict(gates)}))
            d = expert_hidden[-1]
        self.towers = nn.ModuleDict({t: MLP(d, hidden, 1) for t in self.tasks})

    def forward(self, batch):
        x0 = self.fields(batch)[0].flatten(1)                                   # [B, m D]
        inputs = {t: x0 for t in ["shared", *self.tasks]}
        for level in self.levels:
            experts, gates = level["experts"], level["gates"]
            out = {g: torch.stack([e(inputs[g]) for e in experts[g]], dim=1) for g in experts}  # {g: [B, E_g, H]}
            nxt = {}
            for t, gate in gates.items():
                pool = torch.cat([out[t], out["shared"]] if t != "shared" else
                                 [*(out[k] for k in self.tasks), out["shared"]], dim=1)         # [B, E, H]
                w = torch.softmax(gate(inputs[t]), dim=-1)                                    # [B, E]
                nxt[t] = torch.einsum("be,beh->bh", w, pool)                                  # [B, H]
            inputs = nxt
        logits = {t: self.towers[t](inputs[t]).squeeze(-1) for t in self.tasks}               # {task: [B]}
        return logits[self.schema.label] if len(logits) == 1 else logits

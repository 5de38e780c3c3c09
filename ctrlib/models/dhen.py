"""DHEN: Deep and Hierarchical Ensemble Network (Zhang et al., Meta 2022), as the multi-task
backbone for conversion-rate prediction (Zhuang et al., Pinterest 2025).

The features become a list of m field embeddings X_0 ``[B, m, D]`` (:class:`ctrlib.layers.FieldTokens`:
categorical fields plus one token per behaviour sequence). A DHEN layer runs k interaction modules
on the same input and ensembles them (sec. 3.2):

    Y = LayerNorm( Ensemble_{i=1..k} Interaction_i(X_n) + ShortCut(X_n) ),    X_{n+1} = Y
    ShortCut(X_n) = X_n if len(X_n) == len(Y), else W_n X_n  (a learned map over the list axis)

Each module maps ``[B, m, D] -> [B, l, D]``; ``Ensemble`` is concatenation (k l tokens), a sum, or a
weighted sum with softmax-normalised learned weights (the production configuration's
``weighted_sum``). Stacking N layers composes the modules: the k^N products I_a(I_b(X)).
The head flattens X_N; every task (a label of the schema) has its own MLP tower, so one backbone
serves click, add-to-cart and checkout (the Pinterest paper's multi-task framework).

The next-action loss (Pinterest 2025, sec. 3.3; the form of TransAct V2): the on-site sequence
encoder's causal states predict each next action against in-batch negatives
(:func:`ctrlib.layers.next_action_loss`), added as ``aux_loss = nal_weight * L_NAL`` in training.

Our reconstruction where the papers give no detail (the full texts were not available): the
modules' projections to l tokens, one low-rank DCN-V2 cross layer on the flattened list, one attention
head, in-batch negatives, and the towers' widths.
"""
from __future__ import annotations

import torch
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, CrossNet, FieldTokens, dot_interaction, next_action_loss

ENSEMBLES = ("concat", "sum", "weighted_sum")


class MLPModule(nn.Module):
    """u = W_m MLP(flatten(X)): an MLP over the whole list, projected to l tokens."""

    def __init__(self, num_in: int, dim: int, num_out: int, hidden=(64,)):
        super().__init__()
        self.num_out, self.dim = num_out, dim
        self.mlp = MLP(num_in * dim, hidden, num_out * dim)

    def forward(self, x):
        return self.mlp(x.flatten(1)).view(len(x), self.num_out, self.dim)      # [B, l, D]


class CrossModule(nn.Module):
    """DCN-V2's cross  x0 * (U V^T x0 + b)  on the flattened list (low rank ``rank``; its residual
    dropped: DHEN's shortcut adds it), then W_m to l tokens (none when l = m): bit-level interactions."""

    def __init__(self, num_in: int, dim: int, num_out: int, rank: int = 16):
        super().__init__()
        self.num_out, self.dim = num_out, dim
        self.cross = CrossNet(num_in * dim, num_layers=1, version=2, low_rank=rank, residual=False)
        self.proj = nn.Identity() if num_out == num_in else nn.Linear(num_in * dim, num_out * dim)

    def forward(self, x):
        return self.proj(self.cross(x.flatten(1))).view(len(x), self.num_out, self.dim)  # [B, l, D]


class SelfAttentionModule(nn.Module):
    """Self-attention over the fields as tokens, softmax((X W_q)(X W_k)^T / sqrt(D)) X W_v, then W
    over the list axis to l tokens: feature-level interactions."""

    def __init__(self, num_in: int, dim: int, num_out: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.tokens = nn.Linear(num_in, num_out, bias=False)                     # W in R^{m x l}

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5     # [B, m, m]
        h = torch.softmax(scores, dim=-1) @ self.v(x)                           # [B, m, D]
        return self.tokens(h.transpose(1, 2)).transpose(1, 2)                   # [B, l, D]


class DotModule(nn.Module):
    """DLRM's pairwise dot products <x_i, x_j> (i < j) with the flattened list, through an MLP to l
    tokens: u = W_m MLP([flatten(X), dots])."""

    def __init__(self, num_in: int, dim: int, num_out: int, hidden=(64,)):
        super().__init__()
        self.num_out, self.dim = num_out, dim
        self.mlp = MLP(num_in * (num_in - 1) // 2 + num_in * dim, hidden, num_out * dim)

    def forward(self, x):
        h = torch.cat([dot_interaction(x), x.flatten(1)], dim=1)                 # [B, m(m-1)/2 + m D]
        return self.mlp(h).view(len(x), self.num_out, self.dim)                  # [B, l, D]


MODULES = {"mlp": MLPModule, "dcn": CrossModule, "attention": SelfAttentionModule, "dot": DotModule}


class DHENLayer(nn.Module):
    """One DHEN layer (eq. above): ``[B, m, D] -> [B, l, D]`` (``[B, k l, D]`` for ``concat``)."""

    def __init__(self, num_in: int, dim: int, modules=("mlp", "dcn", "attention", "dot"),
                 ensemble: str = "weighted_sum", num_out: int | None = None, hidden=(64,)):
        super().__init__()
        unknown = [m for m in modules if m not in MODULES]
        if unknown or not modules:
            raise ValueError(f"unknown interaction modules {unknown}; choose from {list(MODULES)}")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        num_out = num_out or num_in
        self.ensemble, self.names = ensemble, tuple(modules)
        self.interactions = nn.ModuleList(
            MODULES[m](num_in, dim, num_out, hidden) if m in ("mlp", "dot") else MODULES[m](num_in, dim, num_out)
            for m in modules)
        self.weights = nn.Parameter(torch.zeros(len(modules))) if ensemble == "weighted_sum" else None
        self.num_out = num_out * len(modules) if ensemble == "concat" else num_out
        self.shortcut = None if self.num_out == num_in else nn.Linear(num_in, self.num_out, bias=False)  # W_n
        self.norm = nn.LayerNorm(dim)

    def ensemble_weights(self) -> torch.Tensor:
        """softmax(w): the weighted sum's module weights (equal weights 1 for ``sum``)."""
        if self.weights is None:
            return torch.ones(len(self.names))
        return torch.softmax(self.weights, dim=0)

    def forward(self, x):
        outs = [m(x) for m in self.interactions]                                # k x [B, l, D]
        if self.ensemble == "concat":
            y = torch.cat(outs, dim=1)                                          # [B, k l, D]
        else:
            w = self.ensemble_weights()
            y = sum(wi * o for wi, o in zip(w, outs))                           # [B, l, D]
        short = x if self.shortcut is None else self.shortcut(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(y + short)


class DHEN(nn.Module):
    """``DHEN(schema, embedding_dim, hidden, modules, depth, ensemble)``: ``hidden`` are each task
    tower's widths, ``module_hidden`` the MLP and dot modules' widths. One label gives ``[B]``
    logits; several a dict ``{label: [B]}`` (plus ``"aux_loss"`` in training when ``nal_weight > 0``:
    the next-action loss of the sequence ``nal_sequence``, the first sequence by default)."""

    def __init__(self, schema: Schema, embedding_dim: int = 8, hidden=(32,),
                 modules=("mlp", "dcn", "attention", "dot"), depth: int = 2, ensemble: str = "weighted_sum",
                 tokens: int | None = None, module_hidden=(64,), nal_weight: float = 0.0,
                 nal_sequence: str | None = None, num_negatives: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.schema, self.nal_weight, self.num_negatives = schema, nal_weight, num_negatives
        self.fields = FieldTokens(schema, embedding_dim)
        if nal_weight and not self.fields.queries:
            raise ValueError("nal_weight > 0 needs a behaviour Sequence feature in the schema")
        self.nal_sequence = nal_sequence or next(iter(self.fields.queries), None)
        m = self.fields.num_fields
        layers = []
        for _ in range(depth):
            layers.append(DHENLayer(m, embedding_dim, modules, ensemble, tokens, module_hidden))
            m = layers[-1].num_out
        self.layers = nn.Sequential(*layers)
        self.towers = nn.ModuleDict({t: MLP(m * embedding_dim, hidden, 1) for t in schema.labels})

    def forward(self, batch):
        x, encoded = self.fields(batch)                                         # [B, m, D]
        h = self.layers(x).flatten(1)                                           # [B, l D]
        out = {t: tower(h).squeeze(-1) for t, tower in self.towers.items()}     # {task: [B]}
        if self.training and self.nal_weight:
            out["aux_loss"] = self.nal_weight * next_action_loss(*encoded[self.nal_sequence], self.num_negatives)
        elif len(out) == 1:
            return out[self.schema.label]
        return out

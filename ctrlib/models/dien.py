"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019).

DIN pools the history; DIEN reads it in order. Two layers on the behaviour embeddings e_1..e_T:

1. **Interest extractor**, a GRU: h_t = GRU(e_t, h_{t-1}). Its states are trained to predict the
   next behaviour by an auxiliary loss (eq. 1) on the next behaviour e_{t+1} against a sampled
   negative ê_{t+1}:
       L_aux = -mean_t [ log σ(<h_t, e_{t+1}>) + log(1 - σ(<h_t, ê_{t+1}>)) ]
2. **Interest evolution**, an AUGRU whose update gate is scaled by the attention of each state
   to the candidate e_a:
       a_t = softmax_t(h_t W e_a)                                   (eq. 3)
       u'_t = a_t * u_t,   h'_t = (1 - u'_t) * h'_{t-1} + u'_t * h~'_t   (eq. 6, 7)
   so behaviours unrelated to the candidate barely move the state; h'_T is the evolved interest.

The auxiliary loss reaches the trainer through the model's output dict ``{"label": logits,
"aux_loss": alpha * L_aux}`` (the one extra-loss hook of :func:`ctrlib.train.fit`).

Our implementation choices: the negative for position t+1 is the behaviour at the same position
in another sequence of the batch (in-batch sampling, so a negative carries all its ids: item and
category); the paper samples from the item set. Padding (left) leaves both GRUs' states at zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import ActivationMLP, BehaviourEmbedding, eval_mode, masked_softmax


class AUGRUCell(nn.Module):
    """One AUGRU step (DIEN eqs. 2, 6, 7), with the paper's gate convention (u = update share):

        u = σ(W_u x + U_u h + b_u),  r = σ(W_r x + U_r h + b_r),  h~ = tanh(W_h x + r * (U_h h) + b_h)
        u' = a * u,  h' = (1 - u') * h + u' * h~

    With a = 1 it is a GRU. ``x [B, I], h [B, H], a [B] -> h' [B, H]``."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.x2h = nn.Linear(input_dim, 3 * hidden_dim)
        self.h2h = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, x, h, a):
        return self.step(self.x2h(x), h, a)

    def step(self, xproj, h, a):
        """The step with the input projection ``x2h(x)`` precomputed (for all t at once in :func:`run_gru`)."""
        xu, xr, xn = xproj.chunk(3, dim=-1)
        hu, hr, hn = self.h2h(h).chunk(3, dim=-1)
        u = torch.sigmoid(xu + hu)
        r = torch.sigmoid(xr + hr)
        n = torch.tanh(xn + r * hn)
        u = a.unsqueeze(-1) * u
        return (1 - u) * h + u * n


def run_gru(cell: nn.Module, x: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor | None = None):
    """Run ``cell`` over ``x [B, L, I]`` left to right; at padding (mask False) the state is kept.
    ``attention [B, L]`` makes it an AUGRU. Returns all states ``[B, L, H]`` (h_0 = 0)."""
    B, L, _ = x.shape
    hidden = cell.hidden_size if isinstance(cell, nn.GRUCell) else cell.h2h.in_features
    h = x.new_zeros(B, hidden)
    states = []
    # unbind once: indexing x[:, t] in the loop would make backward zero-fill a full [B, L, .] tensor per step
    steps = (cell.x2h(x) if attention is not None else x).unbind(1)  # AUGRU: one input matmul for every step
    att = attention.unbind(1) if attention is not None else None
    keep = mask.unsqueeze(-1).unbind(1)
    for t in range(L):
        new = cell(steps[t], h) if attention is None else cell.step(steps[t], h, att[t])
        h = torch.where(keep[t], new, h)
        states.append(h)
    return torch.stack(states, dim=1)


def run_gru_fused(gru: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`run_gru` for a plain ``nn.GRU`` in one fused call: each left-padded row is rotated to
    right padding (so the GRU meets the real behaviours first), run, and rotated back; states at
    padding are zero, as in the loop."""
    B, L, _ = x.shape
    shift = (L - mask.sum(1)).unsqueeze(1)                           # pads per row, [B, 1]
    pos = torch.arange(L, device=x.device).unsqueeze(0)
    fwd = ((pos + shift) % L).unsqueeze(-1)                          # right-padded j <- left-padded j + shift
    out, _ = gru(x.gather(1, fwd.expand_as(x)))
    back = ((pos - shift) % L).unsqueeze(-1)
    return out.gather(1, back.expand_as(out)) * mask.unsqueeze(-1)   # [B, L, H]


def auxiliary_loss(states, keys, mask) -> torch.Tensor:
    """DIEN eq. 1: h_t must score the true next behaviour e_{t+1} above a negative ê_{t+1} taken
    from another sequence of the batch (the next row's behaviour at the same position)."""
    h = states[:, :-1]                                             # [B, L-1, H]
    pos, neg = keys[:, 1:], keys.roll(1, dims=0)[:, 1:]            # [B, L-1, d]
    valid = mask[:, :-1] & mask[:, 1:]                             # h_t real and e_{t+1} real
    valid_neg = valid & mask.roll(1, dims=0)[:, 1:]
    pos_logit, neg_logit = (h * pos).sum(-1), (h * neg).sum(-1)
    loss_pos = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
    loss_neg = F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
    total = (loss_pos * valid).sum() + (loss_neg * valid_neg).sum()
    return total / valid.sum().clamp(min=1)


class DIEN(nn.Module):
    """logit = MLP([fields, h'_T, e_a * h'_T]); ``aux_weight`` = alpha (0 switches the auxiliary loss off).
    Embeddings start at N(0, ``init_std``) (DeepCTR's 1e-4 by default)."""

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(200, 80), pairs=None, aux_weight: float = 1.0,
                 activation: str = "dice", dropout: float = 0.0, init_std: float = 1e-4):
        super().__init__()
        self.schema, self.aux_weight = schema, aux_weight
        self.embedding = BehaviourEmbedding(schema, embedding_dim, pairs, init_std)
        d = self.embedding.width
        self.extractor = nn.GRU(d, d, batch_first=True)     # hidden = d so <h_t, e_{t+1}> is defined
        self.attention = nn.Linear(d, d, bias=False)       # W in a_t ∝ exp(h_t W e_a)
        self.evolution = AUGRUCell(d, d)
        self.mlp = ActivationMLP(self.embedding.num_fields * embedding_dim + 2 * d, hidden, activation, 1, dropout)

    def interests(self, batch):
        """Extractor states ``[B, L, d]``, attention ``[B, L]``, evolved interest ``[B, d]``, and the
        embeddings (fields, query, keys, mask)."""
        fields, query, keys, mask = self.embedding(batch)
        states = run_gru_fused(self.extractor, keys, mask)                             # [B, L, d]
        scores = torch.einsum("bld,bd->bl", states, self.attention(query))             # h_t W e_a
        a = masked_softmax(scores, mask)                                               # [B, L]
        final = run_gru(self.evolution, states, mask, a)[:, -1]                        # [B, d]
        return states, a, final, (fields, query, keys, mask)

    @torch.no_grad()
    def attention_weights(self, batch) -> torch.Tensor:
        """The attention a_t of each extractor state to the candidate, ``[B, L]`` (0 at padding)."""
        with eval_mode(self):
            return self.interests(batch)[1]

    def forward(self, batch):
        states, _, final, (fields, query, keys, mask) = self.interests(batch)
        logit = self.mlp(torch.cat([fields.flatten(1), final, query * final], dim=1)).squeeze(-1)  # [B]
        if self.training and self.aux_weight:
            return {self.schema.label: logit, "aux_loss": self.aux_weight * auxiliary_loss(states, keys, mask)}
        return logit

"""Diff-MSIN: Diffusion-based Multi-modal Synergy Interest Network (Cui et al., SIGIR 2025).

Every behaviour and the candidate are seen through several **channels**: the ID embedding and one
projected vector per item-side modality (text, image, or any other view). Shapes: B batch, M
channels (ID + modalities), F interest fields, L history length, D embedding width.

* **MFE** (multi-modal feature enhancement): a residual *special* expert per channel and a *common*
  expert on the channel mean:  P_m = E_m(H_m) + H_m,  P_c = E_c(H̄) + H̄,  H̄ = mean_m H_m.
* **SRC** (synergistic relationship capture, the "diffusion"): T rounds of one-step noising and a
  DDPM-style reverse step whose noise estimate is cross-modal attention from the other channels:
      h̃_m = sqrt(α_t) h_m + sqrt(1 - α_t) ε
      ε̂_m = Σ_{n≠m} σ(a_{n→m}) CI_{n→m}(h̃_m, h̃_n),   CI(x, y) = γ softmax(W_q x (W_k y)ᵀ / sqrt(D)) W_v y + x
      h_m ← (h̃_m - (1 - α_t) / sqrt(1 - ᾱ_{t+1}) ε̂_m) / sqrt(α_t)
  with ᾱ = cos²(linspace(0, 0.9 π/2, T + 1)) and α_t = ᾱ_{t+1} / ᾱ_t; then
  h_syn = MLP_fuse([h_1; ...; h_M]) + H̄. No denoising loss: it is trained by the CTR loss alone.
* **Knowledge decoupling**: the F interest vectors (mean over the history of P_1..P_M, P_c, h_syn)
  are pushed apart by  L_con = mean_{i<j} cos(P̄_i, P̄_j).
* **FDAF** (feature dynamic adaptive fusion): a second-order cross over the fields,
  P_i ← P_i + 0.1 · mean_j (P_i ⊙ P_j), target attention per field with its own target
  (T_m for a channel field, T̄ for the common and synergy fields), and  s_i = Ψ(u_i ⊙ T_i).
* **Head**: MLP([fields; DIN's pooled ID history; s_1 ... s_F]).  Loss (in the trainer, through
  ``aux_loss``): BCE + λ_con L_con + λ_syn · mean_b y_b (1 - cos(mean_L h_syn, T̄)).

The equations follow the released code (``Cxx-0/Diff-MSIN``) where the paper was not available;
the released code's deviations are flags, off by default (see the chapter): ``released_channels``
(its shuffled channel assignment), ``released_reverse_index`` (ᾱ_t instead of ᾱ_{t+1} in the
reverse step: a coefficient ≈ 138 at t = 0), ``released_synergy_sign`` (L_syn = max(0, cos), which
pushes h_syn *away* from the target), ``noise_at_eval`` (SRC noise also at inference) and
``shared_cross_attention`` (one CI module for all channel pairs). ``fdaf="mean"`` is what the
released attention computes (uniform weights: mean pooling). ``fusion="concat"`` is the
concatenation baseline: DIN over behaviours described by [ID; modal vectors].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import (MLP, ActivationMLP, ActivationUnit, BehaviourEmbedding, attention_pooling, eval_mode,
                           masked_mean, masked_softmax)

FUSIONS = ("diff_msin", "concat")
FDAF_MODES = ("attention", "mean")


def cosine_schedule(steps: int) -> torch.Tensor:
    """ᾱ_0..ᾱ_T = cos²(linspace(0, 0.9 π/2, T + 1)); ᾱ_0 = 1.  ``[T + 1]``."""
    return torch.cos(torch.linspace(0, 0.9 * math.pi / 2, steps + 1, dtype=torch.float64)) ** 2


def reverse_coefficients(steps: int, released: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """α_t and the ε̂ coefficient (1 - α_t) / sqrt(1 - ᾱ) of each step t = 0..T-1, ``[T]`` each.
    Corrected: ᾱ_{t+1}; ``released``: ᾱ_t, whose sqrt(1 - ᾱ_0) = 0 the code clamps to 1e-4."""
    alpha_bar = cosine_schedule(steps)
    alpha = alpha_bar[1:] / alpha_bar[:-1]
    ref = alpha_bar[:-1] if released else alpha_bar[1:]
    return alpha, (1 - alpha) / (1 - ref).sqrt().clamp(min=1e-4)


class CrossModalAttention(nn.Module):
    """CI(x, y) = γ · softmax(W_q x (W_k y)ᵀ / sqrt(D)) W_v y + x for ``pairs`` channel pairs at once:
    in pair p, channel x_p attends over channel y_p's history positions (padding masked). Each
    pair has its own W_q, W_k, W_v (``nn.Linear``'s init) and γ, which starts at 0, so CI starts
    as the identity on x. ``x, y [B, P, L, D]`` (P = ``pairs``, or 1 broadcast to any P)."""

    def __init__(self, dim: int, pairs: int = 1):
        super().__init__()
        bound = 1 / math.sqrt(dim)
        self.w = nn.Parameter(torch.empty(3, pairs, dim, dim).uniform_(-bound, bound))  # W_q, W_k, W_v
        self.gamma = nn.Parameter(torch.zeros(pairs))

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, P, L, D = x.shape
        w = self.w.expand(3, P, D, D)

        def project(z, weight):  # one [B*L, D] x [D, D] product per pair: [P, B, L, D]
            return torch.bmm(z.transpose(0, 1).reshape(P, B * L, D), weight).view(P, B, L, D)

        q, k, v = project(x, w[0]), project(y, w[1]), project(y, w[2])
        keep = mask | ~mask.any(1, keepdim=True)                     # an empty history attends to its padding
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[None, :, None, :])  # [P, B, L, D]
        out = out * mask.any(1)[None, :, None, None]                 # ... and gets no attention output
        return self.gamma[:, None, None] * out.transpose(0, 1) + x   # [B, P, L, D]


class SRC(nn.Module):
    """Synergistic relationship capture: ``refine`` runs the T noisy cross-modal steps on the M
    channel representations ``[B, M, L, D]``; ``forward`` adds the fuse MLP: ``[B, L, D]``.
    T = 0 makes ``refine`` the identity."""

    def __init__(self, dim: int, channels: int, steps: int = 12, released_reverse_index: bool = False,
                 shared_attention: bool = False, noise_at_eval: bool = False):
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps (T) must be >= 0, got {steps}")
        self.steps, self.noise_at_eval = steps, noise_at_eval
        empty = torch.ones(0, dtype=torch.float64)
        alpha, coef = reverse_coefficients(steps, released_reverse_index) if steps else (empty, empty)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("coef", coef, persistent=False)
        pairs = [(n, m) for m in range(channels) for n in range(channels) if n != m]    # n -> m
        self.register_buffer("source", torch.tensor([n for n, _ in pairs]), persistent=False)
        self.register_buffer("route", F.one_hot(torch.tensor([m for _, m in pairs]), channels).float(),
                             persistent=False)                                           # [P, M]
        self.gates = nn.Parameter(torch.full((len(pairs),), 0.5))                       # a_{n->m}
        self.attention = CrossModalAttention(dim, 1 if shared_attention else len(pairs))
        self.fuse = MLP(channels * dim, (2 * dim,), dim, activation=nn.GELU)
        for layer in self.fuse.net:
            if isinstance(layer, nn.Linear):
                nn.init.constant_(layer.bias, 0.1)

    def refine(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.route.argmax(1)                                                       # m of each pair
        for t in range(self.steps):
            noise = torch.randn_like(h) if (self.training or self.noise_at_eval) else torch.zeros_like(h)
            noisy = self.alpha[t].sqrt() * h + (1 - self.alpha[t]).sqrt() * noise        # [B, M, L, D]
            ci = self.attention(noisy[:, target], noisy[:, self.source], mask)          # [B, P, L, D]
            eps = torch.einsum("bpld,pm->bmld", torch.sigmoid(self.gates)[:, None, None] * ci, self.route)
            h = (noisy - self.coef[t] * eps) / self.alpha[t].sqrt()                      # [B, M, L, D]
        return h

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.refine(h, mask)                                                         # [B, M, L, D]
        return self.fuse(h.transpose(1, 2).flatten(2))                                   # [B, L, D]


def decoupling_loss(interests: torch.Tensor) -> torch.Tensor:
    """L_con = mean over pairs i < j (and the batch) of cos(P̄_i, P̄_j).  ``[B, F, D] -> scalar``."""
    u = F.normalize(interests, dim=-1)
    cos = u @ u.transpose(1, 2)                                         # [B, F, F]
    i, j = torch.triu_indices(u.shape[1], u.shape[1], offset=1, device=u.device)
    return cos[:, i, j].mean()


class DiffMSIN(nn.Module):
    """logit = MLP([fields; DIN(ID history); FDAF(MFE + SRC interest fields)]).

    ``modal_tables`` (keyword-only: the schema cannot say it) maps each modality's name to its
    item-side vectors ``[item vocab, D_m]`` indexed by item id (row 0: padding). They are fixed
    inputs [ours: the released code fine-tunes them]; each is L2-normalised per item and projected
    to D by a learned linear map. ``steps`` is T; ``decouple_weight`` λ_con and ``synergy_weight``
    λ_syn weight the extra losses (0 turns one off); ``common_expert=False`` drops P_c.
    """

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(200, 80), *, modal_tables: dict,
                 fusion: str = "diff_msin", steps: int = 3, common_expert: bool = True, fdaf: str = "attention",
                 decouple_weight: float = 0.1, synergy_weight: float = 0.05, attention_hidden=(36,),
                 activation: str = "dice", released_channels: bool = False, released_reverse_index: bool = False,
                 released_synergy_sign: bool = False, noise_at_eval: bool = False,
                 shared_cross_attention: bool = False, init_std: float = 1e-4):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fdaf not in FDAF_MODES:
            raise ValueError(f"fdaf must be one of {FDAF_MODES}, got {fdaf!r}")
        if not modal_tables:
            raise ValueError("modal_tables is empty: give at least one modality, e.g. {'text': [items, D_text]}")
        if released_channels and len(modal_tables) != 2:
            raise ValueError(f"released_channels shuffles exactly two modalities (text, image), "
                             f"got {list(modal_tables)}")
        self.schema, self.fusion, self.fdaf = schema, fusion, fdaf
        self.decouple_weight, self.synergy_weight = decouple_weight, synergy_weight
        self.released_channels, self.released_synergy_sign = released_channels, released_synergy_sign
        self.embedding = BehaviourEmbedding(schema, embedding_dim, init_std=init_std)
        if len(self.embedding.pairs) != 1:
            raise ValueError(f"Diff-MSIN reads one behaviour sequence paired with the item, got {self.embedding.pairs}")
        self.item, self.history = self.embedding.pairs[0]
        items = schema[self.item].vocab_size
        self.modalities = list(modal_tables)
        for name, table in modal_tables.items():
            table = torch.as_tensor(table, dtype=torch.float32)
            if table.ndim != 2 or len(table) != items:
                raise ValueError(f"modal table {name!r} has shape {tuple(table.shape)}; it must be "
                                 f"[{items} (the {self.item!r} vocabulary), D_{name}], one row per item id")
            if not torch.isfinite(table).all():
                raise ValueError(f"modal table {name!r} holds non-finite values")
            self.register_buffer(f"table_{name}", table)
        self.project = nn.ModuleDict({n: nn.Linear(modal_tables[n].shape[1], embedding_dim, bias=False)
                                      for n in self.modalities})
        D, M = embedding_dim, 1 + len(self.modalities)
        fields_width = self.embedding.num_fields * D
        if fusion == "concat":
            self.attention = ActivationUnit(M * D, attention_hidden, activation)
            self.mlp = ActivationMLP(fields_width + (M - 1) * D + M * D, hidden, activation, out_dim=1)
            return
        self.attention = ActivationUnit(D, attention_hidden, activation)
        self.special = nn.ModuleList(MLP(D, (2 * D,), D) for _ in range(M))            # E_m
        self.common = MLP(D, (2 * D,), D) if common_expert else None                    # E_c
        self.src = SRC(D, M, steps, released_reverse_index, shared_cross_attention, noise_at_eval)
        self.psi = MLP(D, (2 * D,), D)                                                  # Ψ
        n_fields = M + (1 if common_expert else 0) + 1
        self.mlp = ActivationMLP(fields_width + D + n_fields * D, hidden, activation, out_dim=1)

    # -- the channels ----------------------------------------------------------------------------
    def modal_table(self, name: str, normalise: bool = True) -> torch.Tensor:
        """Modality ``name``'s vectors of every item, projected: ``[item vocab, D]``."""
        table = getattr(self, f"table_{name}")
        return self.project[name](F.normalize(table, dim=-1) if normalise else table)

    def channels(self, batch):
        """fields ``[B, F0, D]``, history channels ``H [B, M, L, D]`` (zero at padding), targets
        ``T [B, M, D]`` and the mask ``[B, L]``; channel 0 is the ID embedding."""
        fields, query, keys, mask = self.embedding(batch)
        hist, item = batch[self.history], batch[self.item]
        m = mask.unsqueeze(-1)
        tables = [self.modal_table(n) for n in self.modalities]                          # [V, D] each
        H = [keys] + [t[hist] * m for t in tables]
        T = [query] + [t[item] for t in tables]
        if self.released_channels and len(self.modalities) == 2:
            # the released code: histories [text, image, raw image], targets [text, text, ID]
            raw = self.modal_table(self.modalities[1], normalise=False)[hist] * m
            H, T = [H[1], H[2], raw], [T[1], T[1], T[0]]
        return fields, torch.stack(H, 1), torch.stack(T, 1), mask

    def interest_fields(self, H, T, mask):
        """The F interest fields after the cross ``[B, F, L, D]``, their targets ``[B, F, D]`` and h_syn."""
        P = H + torch.stack([e(H[:, i]) for i, e in enumerate(self.special)], 1)       # MFE special  [B, M, L, D]
        H_bar, T_bar = H.mean(1), T.mean(1)                                              # [B, L, D], [B, D]
        h_syn = self.src(P, mask) + H_bar                                                # SRC          [B, L, D]
        fields, targets = [P], [T]
        if self.common is not None:
            fields.append((H_bar + self.common(H_bar)).unsqueeze(1))                     # MFE common   [B, 1, L, D]
            targets.append(T_bar.unsqueeze(1))
        fields.append(h_syn.unsqueeze(1))
        targets.append(T_bar.unsqueeze(1))
        P, targets = torch.cat(fields, 1), torch.cat(targets, 1)                        # [B, F, L, D], [B, F, D]
        P = P + 0.1 * P * P.mean(1, keepdim=True)                                        # cross: mean_j P_i ⊙ P_j
        return P * mask[:, None, :, None], targets, h_syn

    @torch.no_grad()
    def interest_vectors(self, batch) -> torch.Tensor:
        """The F interest vectors (history means of the fields) ``[B, F, D]`` in eval mode."""
        with eval_mode(self):
            _, H, T, mask = self.channels(batch)
            P, _, _ = self.interest_fields(H, T, mask)
            return P.sum(2) / mask.sum(1).clamp(min=1)[:, None, None]

    def forward(self, batch):
        fields, H, T, mask = self.channels(batch)
        if self.fusion == "concat":
            keys, query = H.transpose(1, 2).flatten(2), T.flatten(1)                     # [B, L, M*D], [B, M*D]
            pooled = attention_pooling(self.attention(query, keys, mask), keys)          # [B, M*D]
            return self.mlp(torch.cat([fields.flatten(1), T[:, 1:].flatten(1), pooled], 1)).squeeze(-1)
        ids, target = H[:, 0], T[:, 0]                                                   # the DIN branch (IDs)
        din = attention_pooling(self.attention(target, ids, mask), ids)                  # [B, D]
        P, targets, h_syn = self.interest_fields(H, T, mask)                             # [B, F, L, D], [B, F, D]
        D = P.shape[-1]
        if self.fdaf == "attention":
            scores = (P * targets.unsqueeze(2)).sum(-1) / math.sqrt(D)                   # [B, F, L]
            u = torch.einsum("bfl,bfld->bfd", masked_softmax(scores, mask.unsqueeze(1)), P)
        else:                                                                            # uniform weights
            u = P.sum(2) / mask.sum(1).clamp(min=1)[:, None, None]                       # [B, F, D]
        s = self.psi(u * targets)                                                        # [B, F, D]
        logit = self.mlp(torch.cat([fields.flatten(1), din, s.flatten(1)], 1)).squeeze(-1)
        if not self.training:
            return logit
        return {self.schema.labels[0]: logit, "aux_loss": self.extra_loss(P, targets, h_syn, mask, batch)}

    def extra_loss(self, P, targets, h_syn, mask, batch) -> torch.Tensor:
        """λ_con L_con + λ_syn mean_b y_b L_syn,b (L_syn = 1 - cos, or max(0, cos) as released)."""
        loss = P.new_zeros(())
        if self.decouple_weight:
            interests = P.sum(2) / mask.sum(1).clamp(min=1)[:, None, None]               # [B, F, D]
            loss = loss + self.decouple_weight * decoupling_loss(interests)
        if self.synergy_weight:
            cos = F.cosine_similarity(masked_mean(h_syn, mask), targets[:, -1], dim=-1)  # [B]
            l_syn = cos.clamp(min=0) if self.released_synergy_sign else 1 - cos
            loss = loss + self.synergy_weight * (batch[self.schema.labels[0]] * l_syn).mean()
        return loss

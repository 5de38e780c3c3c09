"""TARQ: target attention in pre-ranking by residual quantization (Li et al., SIGIR 2026).

A pre-ranker scores thousands of candidates per request, so it is a two-tower model: the item
vector is precomputed and a candidate costs one dot product. Target attention (TA) lets the
candidate query the user's history, which costs a full attention per candidate. TARQ writes
each candidate's query vector as a sum of L codewords (residual quantization), runs the
attention once per request with *every* codeword as the query, and sums the L attended codewords
a candidate's codes point to. Attention is not linear in its query, so a teacher TA net
(trained jointly, used only in training) is distilled into that sum.

    -- two-tower backbone (ctrlib.models.TwoTower) --
    u = MLP_user(profile, context, pooled history)          v = MLP_item(candidate)       [B, D]
    -- residual quantization of the candidate's query q = g(x_item) --                      [B, Dc]
    r_0 = q;  z_l = argmin_k ||r_{l-1} - C_l[k]||^2;  r_l = r_{l-1} - C_l[z_l]    l = 1..L  C_l: [K, Dc]
    -- teacher: target attention with the candidate as the query --
    h_bar = TA_t(q, history)                                                              [B, A]
    -- student, once per request: every codeword queries the history --
    X_l[k] = TA_s(C_l[k], history)                                                        [B, L, K, A]
    h_hat = sum_l X_l[z_l]                   per candidate: L gathers and a sum            [B, A]
    -- pre-ranking head [ours: the paper's head is not released] --
    logit = <u + P h, v> + b                 h = h_hat (student, served) or h_bar (teacher)
    -- losses (exact from the released code, except L_rq [ours]) --
    L_TA    = BCE(teacher logit, y)
    L_align = sum_l mean_b [KL(p_l || p_bar_l) + KL(p_bar_l || p_l)]       (symmetric KL, eps 1e-8)
              p_l = softmax_k(-||r_{l-1} - C_l[k]||^2),  p_bar_l = softmax_k(-||r_bar_{l-1} - X_l[k]||^2),
              r_bar_0 = stop_grad(h_bar),  r_bar_l = r_bar_{l-1} - X_l[z_l]  (the item's codes z drive both)
    L_rec   = ||h_hat - stop_grad(h_bar)||^2 / (2B)                        (tf.nn.l2_loss / batch)
    L_rq    = sum_l ||sg(r_{l-1}) - C_l[z_l]||^2                (codebook loss on r_0 = sg(q))  [ours]
    L       = BCE(student logit, y) + L_TA + align_weight L_align + distil_weight L_rec + L_rq

Our reconstructions (the parent classes of the released TensorFlow file are not public): the head
above; the codebook update, a loss (the VQ-VAE codebook term: each chosen codeword moves to the
residual it quantized), not an EMA; the quantizer reads stop_grad(q), so no commitment term pulls
the query to the codes (a commitment term pulled the shared item embeddings and cost AUC in our
trials); the VQ-VAE reference initialisation U(-1/K, 1/K) of the codewords; q = LayerNorm(g(x_item)),
the teacher's query, shared with the quantizer (so the codewords live in the space the attention
is queried in).

Serving (:meth:`TARQ.request_state`, :meth:`TARQ.index_items`, :meth:`TARQ.score`): items are
indexed offline (v, q, codes); per request the user tower runs once and the L*K attended
codewords are projected by P once, a table ``[L, K, D]``; per candidate the score is L lookups, a
sum and a dot product, whatever the history length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, TargetAttention, behaviour_pairs, eval_mode
from ctrlib.models.two_tower import TwoTower

KL_EPS = 1e-8  # inside the logs of the symmetric KL, as in the released code


# -- residual quantization -------------------------------------------------------------------

@dataclass
class Quantized:
    """What :class:`ResidualQuantizer` returns for a batch of vectors ``[B, D]``."""
    codes: torch.Tensor       # [B, L] the chosen codeword per level
    quantized: torch.Tensor   # [B, D] sum_l C_l[z_l]
    logits: torch.Tensor      # [B, L, K] -||r_{l-1} - C_l[k]||^2 (p_l = softmax of these)
    loss: torch.Tensor        # the codebook + commitment loss L_rq


class ResidualQuantizer(nn.Module):
    """L levels of K codewords of width ``dim``; each level quantizes what the levels before it left.

    Codewords are learned by a loss [ours]: the codebook term pulls each chosen codeword to the
    residual it quantized, the commitment term (weight ``commitment``) pulls the residual to it.
    Initialised U(-1/K, 1/K), the VQ-VAE reference choice [ours]."""

    def __init__(self, dim: int, levels: int = 2, codes: int = 16, commitment: float = 0.25):
        super().__init__()
        if levels < 1 or codes < 2:
            raise ValueError(f"a residual quantizer needs levels >= 1 and codes >= 2, got {levels} and {codes}")
        self.levels, self.codes, self.commitment = levels, codes, commitment
        self.codebooks = nn.Parameter(torch.empty(levels, codes, dim).uniform_(-1 / codes, 1 / codes))  # [L, K, D]

    def forward(self, v: torch.Tensor) -> Quantized:
        r, codes, logits, loss = v, [], [], v.new_zeros(())
        for C in self.codebooks:                                             # C: [K, D]
            d = r.pow(2).sum(-1, keepdim=True) - 2 * r @ C.T + C.pow(2).sum(-1)  # [B, K] ||r - C_k||^2
            z = d.argmin(-1)                                                 # [B]
            c = C[z]                                                         # [B, D]
            loss = loss + (r.detach() - c).pow(2).sum(-1).mean() \
                + self.commitment * (r - c.detach()).pow(2).sum(-1).mean()
            codes.append(z)
            logits.append(-d)
            r = r - c                                                        # r_l = r_{l-1} - C_l[z_l]
        return Quantized(torch.stack(codes, 1), v - r, torch.stack(logits, 1), loss)


USAGE_COLUMNS = ("level", "utilisation", "entropy", "top_code", "top_share")


def code_usage(codes, num_codes: int) -> dict[str, list]:
    """Per level (the released code's ``metrics_op``): codebook ``utilisation`` (distinct codes used /
    K), ``entropy`` of the code frequencies (nats; log K at most), the ``top_code`` and its share.
    ``codes``: ``[N, L]`` code ids. Returns columns (``pd.DataFrame(code_usage(...))`` for a table)."""
    return _columns(_usage(torch.as_tensor(codes), num_codes), USAGE_COLUMNS)


def _columns(rows: torch.Tensor, names) -> dict[str, list]:
    ints = {"step", "level", "top_code"}
    return {n: [int(x) if n in ints else float(x) for x in rows[:, j].tolist()] for j, n in enumerate(names)}


def _usage(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """``[L, 5]``: level, utilisation, entropy, top code, top share (see :func:`code_usage`)."""
    L = codes.shape[1]
    counts = torch.zeros(L, num_codes, dtype=torch.float64)
    counts.scatter_add_(1, codes.T.long(), torch.ones(codes.T.shape, dtype=torch.float64))  # [L, K]
    p = counts / counts.sum(1, keepdim=True)
    entropy = -(p * p.clamp(min=1e-300).log()).sum(1)
    top_share, top = p.max(1)
    return torch.stack([torch.arange(1, L + 1, dtype=torch.float64), (counts > 0).sum(1) / num_codes,
                        entropy, top.double(), top_share], 1)


# -- the losses ------------------------------------------------------------------------------

def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """KL(p || q) + KL(q || p) over the last axis, with ``eps`` inside the logs: ``[..., K] -> [...]``."""
    lp, lq = (p + eps).log(), (q + eps).log()
    return (p * (lp - lq)).sum(-1) + (q * (lq - lp)).sum(-1)


def alignment_loss(item_logits: torch.Tensor, attended: torch.Tensor, codes: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """Codebook alignment: sum over levels of the batch-mean symmetric KL between the code
    distribution of the item's residual (``item_logits`` ``[B, L, K]``) and that of the teacher
    output's residual against the attended codewords (``attended`` ``[B, L, K, A]``); the item's
    ``codes`` ``[B, L]`` drive both residual chains, which start at ``stop_grad(target)`` ``[B, A]``."""
    r_bar, loss = target.detach(), target.new_zeros(())
    for level in range(attended.shape[1]):
        X = attended[:, level]                                               # [B, K, A]
        p = torch.softmax(item_logits[:, level], -1)                         # [B, K]
        p_bar = torch.softmax(-(r_bar.unsqueeze(1) - X).pow(2).sum(-1), -1)  # [B, K]
        loss = loss + symmetric_kl(p, p_bar).mean()
        r_bar = r_bar - X[torch.arange(len(X)), codes[:, level]]             # r_bar_l = r_bar_{l-1} - X_l[z_l]
    return loss


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||student - stop_grad(teacher)||^2 / (2B)`` (the released code's ``tf.nn.l2_loss(...) / batch``)."""
    return (student - teacher.detach()).pow(2).sum() / (2 * len(student))


# -- serving ---------------------------------------------------------------------------------

@dataclass
class ItemIndex:
    """The offline item side: TT item vectors ``[N, D]``, attention queries ``[N, Dc]``, codes ``[N, L]``
    and (K^L <= MAX_COMBOS) each item's code combination ``sum_l z_l K^(L-1-l)`` ``[N]``."""
    vectors: torch.Tensor
    queries: torch.Tensor
    codes: torch.Tensor | None
    combos: torch.Tensor | None = None


@dataclass
class RequestState:
    """The per-request user side: user vectors ``[R, D]``, history keys ``[R, n, W]`` and mask, and
    (student) the projected attended codewords ``P X_l[k]`` ``[R, L, K, D]`` and, for K^L <=
    MAX_COMBOS, ``u + sum_l P X_l[c_l]`` for every code combination c, ``[R, K^L, D]``."""
    users: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    table: torch.Tensor | None
    by_combo: torch.Tensor | None = None


MAX_COMBOS = 4_096  # up to K^L code combinations, a request precomputes one user vector per combination


# -- the model -------------------------------------------------------------------------------

class TARQ(nn.Module):
    """TARQ on a :class:`TwoTower` backbone (``item_features`` name the item tower's fields).

    ``levels`` x ``codes``: the residual quantizer (L x K); ``code_dim``: the width of the
    candidate's query vector and the codewords; ``attention_dim``: the attention output width.
    ``align_weight`` (lambda_KL, 1 in the released code) and ``distil_weight`` switch the alignment
    and the distillation (0 = the ablations). ``teacher_only=True`` is target attention as a
    stand-alone ranker, the upper bound: the same backbone and head with the exact attention per
    candidate, no quantizer, no student. Batches need the label (the teacher's loss) in training.
    """

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(128,), out_dim: int = 32, *,
                 item_features, levels: int = 2, codes: int = 16, code_dim: int = 32, attention_dim: int = 32,
                 num_heads: int = 1, align_weight: float = 1.0, distil_weight: float = 1.0,
                 teacher_only: bool = False, pairs=None, dropout: float = 0.0,
                 log_usage: bool = True):
        super().__init__()
        self.schema, self.teacher_only = schema, teacher_only
        self.align_weight, self.distil_weight, self.log_usage = align_weight, distil_weight, log_usage
        self.backbone = TwoTower(schema, embedding_dim, hidden, out_dim, dropout, item_features=item_features)
        self.pairs = behaviour_pairs(schema, pairs)                 # (candidate field, history sequence)
        width = len(self.pairs) * embedding_dim
        self.item_net = nn.Sequential(MLP(width, (code_dim,), code_dim), nn.LayerNorm(code_dim))  # g  [B, Dc]
        self.teacher = TargetAttention(code_dim, width, attention_dim, num_heads)
        self.project = nn.Linear(attention_dim, out_dim, bias=False)  # P of the head [ours]
        if not teacher_only:
            self.quantizer = ResidualQuantizer(code_dim, levels, codes)
            self.student = TargetAttention(code_dim, width, attention_dim, num_heads)
            if codes ** levels <= MAX_COMBOS:  # digit l of every code combination c = sum_l z_l K^(L-1-l)
                c = torch.arange(codes ** levels)
                digits = torch.stack([(c // codes ** (levels - 1 - lv)) % codes for lv in range(levels)])
                self.register_buffer("combo_digits", digits, persistent=False)          # [L, K^L]
        self.usage: list[torch.Tensor] = []  # per training step: [L, 5] code usage (see usage_history)

    # -- pieces ------------------------------------------------------------------------------
    def _history(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """History keys ``[B, n, W]`` (the paired sequences' embeddings, concatenated) and mask ``[B, n]``."""
        seqs = [self.backbone.embedding.sequence(batch, s) for _, s in self.pairs]
        return torch.cat([e for e, _ in seqs], -1), seqs[0][1]

    def _query(self, batch) -> torch.Tensor:
        """The candidate's query vector q = g(x_item) ``[B, Dc]``."""
        emb = self.backbone.embedding
        return self.item_net(torch.cat([emb.lookup(t, batch[t]) for t, _ in self.pairs], -1))

    def _logit(self, u, v, h) -> torch.Tensor:
        return ((u + self.project(h)) * v).sum(-1) + self.backbone.bias  # <u + P h, v> + b  [...]

    def attended_codewords(self, keys, mask) -> torch.Tensor:
        """Every codeword as the query over the history: ``X [B, L, K, A]`` (once per request)."""
        C = self.quantizer.codebooks                                              # [L, K, Dc]
        L, K, Dc = C.shape
        out, _ = self.student(C.reshape(1, L * K, Dc), keys, mask)                # [B, L*K, A]
        return out.view(len(keys), L, K, -1)

    @staticmethod
    def gather_codes(X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``sum_l X[b, l, z_bl]``: ``X [B, L, K, A]``, ``codes [B, L]`` -> ``[B, A]``."""
        idx = codes[:, :, None, None].expand(-1, -1, 1, X.shape[-1])             # [B, L, 1, A]
        return X.gather(2, idx).squeeze(2).sum(1)

    # -- training and batched scoring --------------------------------------------------------
    def forward(self, batch):
        u, v = self.backbone.towers(batch)                                      # [B, D] each
        keys, mask = self._history(batch)                                       # [B, n, W], [B, n]
        q = self._query(batch)                                                  # [B, Dc]
        if self.teacher_only:
            return self._logit(u, v, self.teacher(q, keys, mask)[0])
        rq = self.quantizer(q.detach())                                         # [ours] codes follow q
        X = self.attended_codewords(keys, mask)                                 # [B, L, K, A]
        h_hat = self.gather_codes(X, rq.codes)                                  # [B, A]
        logit = self._logit(u, v, h_hat)
        if not self.training:
            return logit
        h_bar = self.teacher(q, keys, mask)[0]                                  # [B, A]
        aux = F.binary_cross_entropy_with_logits(self._logit(u, v, h_bar), batch[self.schema.label]) + rq.loss
        if self.distil_weight:
            aux = aux + self.distil_weight * distillation_loss(h_hat, h_bar)
        if self.align_weight:
            aux = aux + self.align_weight * alignment_loss(rq.logits, X, rq.codes, h_bar)
        if self.log_usage:
            self._log(rq.codes)
        return {self.schema.label: logit, "aux_loss": aux}

    def _log(self, codes: torch.Tensor) -> None:
        self.usage.append(_usage(codes.detach(), self.quantizer.codes))

    def usage_history(self) -> dict[str, list]:
        """Per training step and level: utilisation, entropy, top code of the batch's codes (columns
        ``step`` and those of :func:`code_usage`)."""
        rows = [torch.cat([torch.full((len(u), 1), float(s), dtype=u.dtype), u], 1) for s, u in enumerate(self.usage)]
        return _columns(torch.cat(rows) if rows else torch.zeros(0, 6), ("step", *USAGE_COLUMNS))

    @torch.no_grad()
    def teacher_and_student(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's attention output ``h_bar`` and the student's ``h_hat`` ``[B, A]`` (eval mode)."""
        with eval_mode(self):
            keys, mask = self._history(batch)
            q = self._query(batch)
            h_bar = self.teacher(q, keys, mask)[0]
            h_hat = self.gather_codes(self.attended_codewords(keys, mask), self.quantizer(q).codes)
        return h_bar, h_hat

    @torch.no_grad()
    def item_codes(self, batch) -> torch.Tensor:
        """The candidates' codes ``[B, L]``."""
        with eval_mode(self):
            return self.quantizer(self._query(batch)).codes

    # -- serving: user side once per request, candidates by lookups ---------------------------
    @torch.no_grad()
    def index_items(self, batch) -> ItemIndex:
        """Offline, one row per item (only the item fields are read by what is kept)."""
        with eval_mode(self):
            _, v = self.backbone.towers(batch)
            q = self._query(batch)
            if self.teacher_only:
                return ItemIndex(v, q, None)
            codes = self.quantizer(q).codes                                       # [N, L]
            L, K = codes.shape[1], self.quantizer.codes
            combos = (codes * K ** torch.arange(L - 1, -1, -1)).sum(1) if K ** L <= MAX_COMBOS else None
            return ItemIndex(v, q, codes, combos)

    def _serving(self) -> None:
        if self.training:
            raise RuntimeError("TARQ serves in eval mode (dropout off): call model.eval() first")

    @torch.no_grad()
    def request_state(self, batch) -> RequestState:
        """Once per request, one row per request (only the user fields and the history are read by
        what is kept): the user vector, the history, and (student) the table ``P X [R, L, K, D]``.
        Eval mode only, like :meth:`score` (the hot path does not switch modes)."""
        self._serving()
        u, _ = self.backbone.towers(batch)
        keys, mask = self._history(batch)
        if self.teacher_only:
            return RequestState(u, keys, mask, None)
        table = self.project(self.attended_codewords(keys, mask))                   # [R, L, K, D]
        by_combo = None
        if hasattr(self, "combo_digits"):  # u + sum_l table[l, c_l] for every combination c
            by_combo = u[:, None] + sum(table[:, lv, d] for lv, d in enumerate(self.combo_digits))  # [R, K^L, D]
        return RequestState(u, keys, mask, table, by_combo)

    @torch.no_grad()
    def score(self, state: RequestState, index: ItemIndex, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, M]`` of the indexed items ``rows`` ``[R, M]`` for each request. Student: one
        lookup of the candidate's code combination in the request's ``by_combo`` table (or L lookups
        in ``table`` and a sum) and a dot product per candidate; teacher: one attention each."""
        self._serving()
        R, M = rows.shape
        flat = rows.reshape(-1)
        v = index.vectors.index_select(0, flat).view(R, M, -1)                 # [R, M, D]
        offset = torch.arange(R)[:, None]
        if self.teacher_only:
            q = index.queries.index_select(0, flat).view(R, M, -1)             # [R, M, Dc]
            user = state.users[:, None] + self.project(self.teacher(q, state.keys, state.mask)[0])
        elif state.by_combo is not None and index.combos is not None:
            C = state.by_combo.shape[1]
            at = index.combos.index_select(0, flat).view(R, M) + offset * C    # row in by_combo
            user = state.by_combo.reshape(R * C, -1).index_select(0, at.reshape(-1)).view(R, M, -1)
        else:
            L, K, D = state.table.shape[1:]
            codes = index.codes.index_select(0, flat).view(R, M, L)
            at = codes + torch.arange(L) * K + offset[..., None] * (L * K)     # row in the table
            h = state.table.reshape(-1, D).index_select(0, at.reshape(-1)).view(R, M, L, D).sum(2)
            user = state.users[:, None] + h                                    # [R, M, D]
        return torch.einsum("rmd,rmd->rm", user, v) + self.backbone.bias


def approximation_error(h_bar: torch.Tensor, h_hat: torch.Tensor) -> dict[str, float]:
    """How well the student's sum approximates the teacher: mean squared error per dimension,
    mean cosine, and the MSE relative to the teacher's mean square."""
    mse = float((h_hat - h_bar).pow(2).mean())
    return {"mse": mse, "cosine": float(F.cosine_similarity(h_hat, h_bar, dim=-1).mean()),
            "relative_mse": mse / max(float(h_bar.pow(2).mean()), 1e-12)}


__all__ = ["TARQ", "ResidualQuantizer", "Quantized", "ItemIndex", "RequestState", "code_usage", "symmetric_kl",
           "alignment_loss", "distillation_loss", "approximation_error"]

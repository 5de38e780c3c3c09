"""Generative ranking over raw (item, action) sequences: MetaGR (HSTU, interleaved) and DFGR (dual flow).

Note: these models return ``[B, N]`` logits (one per event) rather than ``[B]``; they train with
:func:`fit_sequences`: :func:`ctrlib.train.fit` with a loss at every training event.

* **MetaGR** (Zhai et al. 2024, the ranking setting as the DFGR authors describe it): each
  behaviour becomes two tokens, ``[c_1, a_1, c_2, a_2, ...]`` (2N tokens), ``c_i`` = item +
  attribute embedding, ``a_i`` = action embedding. A causal HSTU stack reads the prediction for
  event i at its item token ``c_i``, which sees every earlier item and action but not ``a_i``.
* **DFGR** (Guo et al. 2025): each behaviour becomes one token per flow. The *real* token is
  item + attribute + TRUE action, the *fake* token is item + attribute + a placeholder action.
  Both flows go through the same weights. Real rows attend causally to real tokens; fake row i
  attends to the real tokens j < i and to itself, and no token attends to a fake token. The
  prediction for event i is read at fake token i. **The exact mask is our reconstruction** from
  the abstract and secondary summaries (the paper text and code were not available to us).

Both score many candidates in one forward pass (:meth:`GenerativeRanker.score_candidates`):
each candidate attends to the whole history and to itself, never to another candidate (HSTU's
``num_targets`` mask).

Batches are dicts of ``[B, N]`` tensors, left-padded (``item_id`` 0 = padding): ``item_id``,
``category`` (any attribute id), ``action`` (1..A), ``timestamp`` (seconds), optionally ``hide``
(True where the action is unknown to the model: it gets the placeholder action).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ctrlib import metrics as M
from ctrlib.data.schema import Categorical, Schema, Sequence
from ctrlib.data.tensors import TensorData
from ctrlib.layers import MLP, EmbeddingTable
from ctrlib.models.hstu import HSTUBlock, LN_EPS, causal_mask, next_timestamps
from ctrlib.train import TrainConfig, fit


def dfgr_mask(n: int, leak: bool = False, device=None) -> torch.Tensor:
    """DFGR's ``[2n, 2n]`` attention mask, rows/columns ordered ``[real_0..real_{n-1} | fake_0..fake_{n-1}]``
    (True = may attend) [our reconstruction]::

        M[r_i, r_j] = j <= i     M[r_i, f_j] = False
        M[f_i, r_j] = j <  i     M[f_i, f_j] = (j == i)

    ``leak=True`` lets fake i also see real i (which carries the true action): the ablation that
    shows why the mask matters."""
    c = causal_mask(n, device)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    fake_sees_real = c if leak else c & ~eye
    top = torch.cat([c, torch.zeros_like(c)], dim=1)
    bottom = torch.cat([fake_sees_real, eye], dim=1)
    return torch.cat([top, bottom], dim=0)


def interleaved_mask(n: int, device=None) -> torch.Tensor:
    """MetaGR's ``[2n, 2n]`` mask over ``[c_1, a_1, ..., c_n, a_n]``: plain causal."""
    return causal_mask(2 * n, device)


def attention_flops(n: int, dim: int, mode: str, candidates: int = 0) -> float:
    """Multiply-adds of the attention matrices (Q K^T and A V) per block and sequence, counting
    only allowed (unmasked) query-key pairs: 2 * pairs * dim.  Training: ``candidates=0``;
    inference: history of ``n`` events plus ``candidates`` targets."""
    if mode == "metagr":
        t = 2 * n
        pairs = t * (t + 1) / 2 if not candidates else t * (t + 1) / 2 + candidates * (t + 1)
    elif mode == "dfgr":
        pairs = n * (n + 1) / 2 + (n * (n - 1) / 2 + n if not candidates else candidates * (n + 1))
    else:
        raise ValueError(f"mode must be 'dfgr' or 'metagr', got {mode!r}")
    return 2.0 * pairs * dim


class GenerativeRanker(nn.Module):
    """MetaGR (``mode="metagr"``) or DFGR (``mode="dfgr"``) over HSTU blocks with shared weights.

    ``forward(batch) -> logits [B, N]``: the prediction for every event of the sequence, each
    from the history before it (teacher forcing: true actions of earlier events, unless hidden).
    ``attention="softmax"`` uses softmax blocks; ``position_bias`` / ``time_bias`` switch the
    two halves of rab; ``leak=True`` (DFGR only) breaks the mask on purpose (ablation).
    """

    def __init__(self, n_items: int, n_attrs: int, n_actions: int, max_events: int, dim: int = 32,
                 num_blocks: int = 2, num_heads: int = 1, mode: str = "dfgr", attention: str = "silu",
                 position_bias: bool = True, time_bias: bool = True, dropout: float = 0.0, leak: bool = False,
                 head_hidden=(64,)):
        super().__init__()
        if mode not in ("dfgr", "metagr"):
            raise ValueError(f"mode must be 'dfgr' or 'metagr', got {mode!r}")
        if leak and mode != "dfgr":
            raise ValueError("leak is a DFGR ablation")
        self.mode, self.leak, self.dim, self.max_events = mode, leak, dim, max_events
        self.placeholder = n_actions + 1  # action ids: 0 pad, 1..A real actions, A+1 placeholder
        self.item_emb = EmbeddingTable(n_items, dim, padding_idx=0)
        self.attr_emb = EmbeddingTable(n_attrs, dim, padding_idx=0)
        self.action_emb = EmbeddingTable(n_actions + 2, dim, padding_idx=0)
        for e in (self.item_emb, self.attr_emb, self.action_emb):
            nn.init.normal_(e.weight, 0, 0.02)
        # + 1: candidates sit one position after the history (padded length n in eq. 2).
        max_len = (2 * max_events if mode == "metagr" else max_events) + 1
        self.blocks = nn.ModuleList(
            HSTUBlock(dim, num_heads, max_len=max_len, attention=attention, position_bias=position_bias,
                      time_bias=time_bias, dropout=dropout) for _ in range(num_blocks))
        self.head = MLP(dim, head_hidden, 1, dropout)

    # ------------------------------------------------------------------ tokens
    def _content(self, items, attrs):
        return self.item_emb(items) + self.attr_emb(attrs)  # [B, N, D]

    def _actions(self, batch):
        a = batch["action"]
        if "hide" in batch:
            a = torch.where(batch["hide"] & (a > 0), torch.full_like(a, self.placeholder), a)
        return a

    def _readout(self, h):
        return self.head(F.layer_norm(h, (self.dim,), eps=LN_EPS)).squeeze(-1)

    # ------------------------------------------------------------------ DFGR: two flows
    def _dual_block(self, block: HSTUBlock, xr, xf, t_r, qt_r, t_f, pos_r, pos_f, fake_mask, valid_r):
        """One block over both flows. Real rows: causal over real keys. Fake row i: the real keys
        allowed by ``fake_mask [Nf, Nr]`` plus its own fake key: an ``[Nf, Nr]`` score matrix and
        one extra column (never the full 2N x 2N one: that is where DFGR saves its FLOPs)."""
        B, Nr, _ = xr.shape
        ur, vr, qr, kr = block.project(xr)
        uf, vf, qf, kf = block.project(xf)
        key_ok = valid_r[:, None, None, :]  # [B, 1, 1, Nr]: padding keys are never attended
        # real rows (HSTU convention: query time qt_r = the next token's timestamp)
        rr = causal_mask(Nr, xr.device) & (key_ok | torch.eye(Nr, dtype=torch.bool, device=xr.device))
        a_r = block.weights(block.scores(qr, kr, block.rab(pos_r, pos_r, qt_r, t_r)), rr)
        av_r = torch.einsum("bhnm,bmhd->bnhd", a_r, vr).reshape(B, Nr, -1)
        # fake rows: real keys + own key (query time = the event's own time)
        s_fr = block.scores(qf, kr, block.rab(pos_f, pos_r, t_f, t_r))  # [B, H, Nf, Nr]
        s_ff = torch.einsum("bnhd,bnhd->bhn", qf, kf)  # [B, H, Nf]
        if block.attention == "softmax":
            s_ff = s_ff / block.qk_dim ** 0.5
        s_ff = s_ff + block.rab(pos_f[:1], pos_f[:1], t_f[:, :1], t_f[:, :1]).reshape(-1, 1, 1)  # j - i = 0, dt = 0
        if block.attention == "silu":  # pointwise weights: the own-key column needs no joint normaliser
            a_fr = block.weights(s_fr, fake_mask & key_ok)  # [B, H, Nf, Nr]
            a_ff = block.weights(s_ff, torch.ones((), dtype=torch.bool))  # [B, H, Nf]
        else:  # softmax: normalise over [allowed real keys | own key] together
            ok = torch.cat([(fake_mask & key_ok).expand(s_fr.shape),
                            torch.ones_like(s_ff[..., None], dtype=torch.bool)], dim=-1)
            a_f = block.weights(torch.cat([s_fr, s_ff.unsqueeze(-1)], dim=-1), ok)  # [B, H, Nf, Nr + 1]
            a_fr, a_ff = a_f[..., :Nr], a_f[..., Nr]
        av_f = (torch.einsum("bhnm,bmhd->bnhd", a_fr, vr)
                + a_ff.permute(0, 2, 1).unsqueeze(-1) * vf).reshape(B, xf.shape[1], -1)
        return block.output(xr, av_r, ur), block.output(xf, av_f, uf)

    def _dfgr(self, items, attrs, actions, t, valid):
        B, N = items.shape
        c = self._content(items, attrs)
        xr = c + self.action_emb(actions)
        xf = c + self.action_emb(torch.full_like(actions, self.placeholder))
        pos = torch.arange(N, device=items.device)
        c_mask = causal_mask(N, items.device)
        fake_mask = c_mask if self.leak else c_mask & ~torch.eye(N, dtype=torch.bool, device=items.device)
        for block in self.blocks:
            xr, xf = self._dual_block(block, xr, xf, t, next_timestamps(t), t, pos, pos, fake_mask, valid)
        return self._readout(xf)  # [B, N]

    # ------------------------------------------------------------------ MetaGR: interleaved
    def _metagr(self, items, attrs, actions, t, valid):
        B, N = items.shape
        c = self._content(items, attrs)
        x = torch.stack([c, self.action_emb(actions)], dim=2).reshape(B, 2 * N, self.dim)  # [c1, a1, c2, a2, ...]
        tt = t.repeat_interleave(2, dim=1)
        ok = valid.repeat_interleave(2, dim=1)
        eye = torch.eye(2 * N, dtype=torch.bool, device=x.device)
        mask = interleaved_mask(N, x.device) & (ok[:, None, :] | eye)  # [B, 2N, 2N]
        for block in self.blocks:
            x = block(x, tt, mask)
        return self._readout(x[:, 0::2])  # item tokens

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        items, attrs, t = batch["item_id"], batch["category"], batch["timestamp"]
        valid = items > 0
        run = self._dfgr if self.mode == "dfgr" else self._metagr
        return run(items, attrs, self._actions(batch), t, valid)

    # ------------------------------------------------------------------ many candidates, one pass
    @torch.no_grad()
    def score_candidates(self, history: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, m]`` of ``m`` candidates (``item_id``, ``category``, ``timestamp`` ``[B, m]``)
        after a history (``[B, n]`` dict as in ``forward``), in one forward pass. Each candidate sees
        the whole history and itself, never another candidate; all sit at position n."""
        items, attrs, t = history["item_id"], history["category"], history["timestamp"]
        actions, valid = self._actions(history), history["item_id"] > 0
        ci, ca, ct = candidates["item_id"], candidates["category"], candidates["timestamp"]
        B, n = items.shape
        m = ci.shape[1]
        dev = items.device
        if self.mode == "dfgr":
            xr = self._content(items, attrs) + self.action_emb(actions)
            xf = self._content(ci, ca) + self.action_emb(torch.full_like(ci, self.placeholder))
            qt_r = torch.cat([t[:, 1:], ct[:, :1]], dim=1)  # the last history row's "next time": the request
            pos_r, pos_f = torch.arange(n, device=dev), torch.full((m,), n, device=dev)
            fake_mask = torch.ones(m, n, dtype=torch.bool, device=dev)
            for block in self.blocks:
                xr, xf = self._dual_block(block, xr, xf, t, qt_r, ct, pos_r, pos_f, fake_mask, valid)
            return self._readout(xf)
        c = self._content(items, attrs)
        hist = torch.stack([c, self.action_emb(actions)], dim=2).reshape(B, 2 * n, self.dim)
        x = torch.cat([hist, self._content(ci, ca)], dim=1)  # [B, 2n + m, D]
        tt = torch.cat([t.repeat_interleave(2, dim=1), ct], dim=1)
        q_time = torch.cat([next_timestamps(torch.cat([t.repeat_interleave(2, dim=1), ct[:, :1]], 1))[:, :2 * n], ct],
                           1)
        ok = torch.cat([valid.repeat_interleave(2, dim=1), torch.ones(B, m, dtype=torch.bool, device=dev)], dim=1)
        T = 2 * n + m
        mask = causal_mask(T, dev)
        mask[2 * n:, 2 * n:] = torch.eye(m, dtype=torch.bool, device=dev)  # candidates: history + self only
        mask = mask & (ok[:, None, :] | torch.eye(T, dtype=torch.bool, device=dev))
        pos = torch.cat([torch.arange(2 * n, device=dev), torch.full((m,), 2 * n, device=dev)])
        for block in self.blocks:
            x = block(x, tt, mask, positions=pos, query_times=q_time)
        return self._readout(x[:, 2 * n:])


# ---------------------------------------------------------------------- training and evaluation
SPLITS = {"train": 1, "valid": 2, "test": 3}


def eval_batch(batch: dict[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
    """The batch as the model sees it when scoring ``split``: the actions of that window and of
    everything after it are unknown (placeholder); earlier events keep their true actions."""
    code = SPLITS[split]
    return {**batch, "hide": batch["split"] >= code} if code > 1 else batch


def fit_sequences(model: GenerativeRanker, data: TensorData, epochs: int = 5, lr: float = 1e-3,
                  batch_size: int = 64, weight_decay: float = 0.0, patience: int = 2, seed: int = 0,
                  validate: bool = True) -> pd.DataFrame:
    """Generative training with :func:`ctrlib.train.fit`: one pass per user sequence, a BCE loss at
    every training event (``split == 1``, the trainer's ``loss_mask``). ``data`` holds ``[U, N]``
    tensors (the batch keys of the module docstring) plus ``label`` and ``split``. Early stopping on
    the AUC at the validation events; the best epoch's weights are restored. Returns ``fit``'s
    history (one row per epoch: train loss, seconds, valid AUC / logloss)."""
    train = TensorData({**data.tensors, "train_event": data["split"] == 1})
    valid = (lambda m: evaluate_sequences(m, data, "valid")) if validate else None
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                         seed=seed, loss_mask="train_event")
    return fit(model, train, valid, config).history


@torch.no_grad()
def predict_sequences(model: GenerativeRanker, data: TensorData, split: str = "test",
                      batch_size: int = 256) -> dict[str, np.ndarray]:
    """Predictions at the events of ``split`` (flattened), with their labels, user rows and, when
    ``data`` has them, the true probabilities."""
    was = model.training
    model.eval()
    out: dict[str, list] = {"p": [], "label": [], "row": []}
    extra = [k for k in ("true_p",) if k in data.tensors]
    for k in extra:
        out[k] = []
    rows = torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.tensors.items()}
        m = batch["split"] == SPLITS[split]
        p = torch.sigmoid(model(eval_batch(batch, split)))
        out["p"].append(p[m].numpy())
        out["label"].append(batch["label"][m].numpy())
        out["row"].append(rows[start:start + batch_size, None].expand_as(m)[m].numpy())
        for k in extra:
            out[k].append(batch[k][m].numpy())
    model.train(was)
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate_sequences(model: GenerativeRanker, data: TensorData, split: str = "test",
                       metrics=("auc", "logloss")) -> dict[str, float]:
    """AUC / logloss (/ GAUC over users) of the predictions at ``split``'s events."""
    r = predict_sequences(model, data, split)
    return M.compute(r["label"], r["p"], r["row"], metrics)


def split_last(valid: np.ndarray, share: float = 0.1, min_events: int = 1) -> np.ndarray:
    """Per-user chronological split codes ``[U, N]`` for left-padded sequences (``valid`` True at
    real events): the last ``share`` of each user's events -> 3 (test), the ``share`` before -> 2
    (valid), the rest -> 1 (train), padding -> 0."""
    n = valid.sum(axis=1, keepdims=True)
    k = np.maximum(np.round(n * share).astype(int), min_events)
    from_end = valid.shape[1] - 1 - np.arange(valid.shape[1])[None, :]  # 0 at the last column
    code = np.where(from_end < k, 3, np.where(from_end < 2 * k, 2, 1))
    return np.where(valid, code, 0)


def impression_schema(n_items: int, n_attrs: int, n_actions: int, history: int) -> Schema:
    """The schema of :func:`impressions_from_sequences`' samples: candidate ``item_id``,
    ``category``, ``action`` (always the placeholder) and the three history sequences, each sharing
    its candidate's embedding table; ``user_id`` is carried for GAUC."""
    A = n_actions + 2
    return Schema((Categorical("item_id", n_items), Categorical("category", n_attrs), Categorical("action", A),
                   Sequence("hist_item_id", n_items, history, embedding="item_id"),
                   Sequence("hist_category", n_attrs, history, embedding="category"),
                   Sequence("hist_action", A, history, embedding="action")), ("label",), ("user_id",))


def impressions_from_sequences(seqs: dict[str, np.ndarray], split: np.ndarray, history: int, which: str,
                               placeholder: int, sample: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Impression-level samples (for DIN, DeepFM, ...) cut from the same sequences: one per event
    of split ``which``, with the ``history`` events before it (left-padded) as sequence features
    ``hist_item_id``, ``hist_category``, ``hist_action``, and the candidate's ``action`` = the
    placeholder (so DIN can pair ``hist_action`` with it). Actions unknown at that split
    (``split >= code`` of the window) become ``placeholder``, exactly as the generative models see
    them. ``sample < 1`` keeps a random share of the events (seeded)."""
    code = SPLITS[which]
    U, N = split.shape
    rows, cols = np.nonzero(split == code)
    if sample < 1:
        keep = np.random.default_rng(seed).random(len(rows)) < sample
        rows, cols = rows[keep], cols[keep]
    action = seqs["action"].copy()
    if code > 1:
        action[(split >= code) & (action > 0)] = placeholder
    pad = lambda a: np.concatenate([np.zeros((U, history), dtype=a.dtype), a], axis=1)  # noqa: E731
    idx = cols[:, None] + np.arange(history)[None, :]  # in padded coordinates: events cols-history..cols-1
    out = {
        "item_id": seqs["item_id"][rows, cols], "category": seqs["category"][rows, cols],
        "action": np.full(len(rows), placeholder),  # the candidate's action: unknown, as DFGR's fake token
        "hist_item_id": pad(seqs["item_id"])[rows[:, None], idx],
        "hist_category": pad(seqs["category"])[rows[:, None], idx],
        "hist_action": pad(action)[rows[:, None], idx],
        "label": seqs["label"][rows, cols].astype(np.float32), "user_id": rows,
    }
    if "true_p" in seqs:
        out["true_p"] = seqs["true_p"][rows, cols]
    t = {k: torch.as_tensor(v) for k, v in out.items()}
    for k in ("item_id", "category", "action", "hist_item_id", "hist_category", "hist_action", "user_id"):
        t[k] = t[k].long()
    t["label"] = t["label"].float()
    return t

"""Generative ranking over raw (item, action) sequences: MetaGR (HSTU, interleaved) and DFGR (dual flow).

Note: these models return ``[B, N]`` logits (one per event) rather than ``[B]``; they train with
``ctrlib.fit`` (the one trainer) and a loss mask (``TrainConfig(loss_mask=...)``: the training events).
The data side (schema, splits, scoring the held-out events) is :mod:`ctrlib.data.generative`.

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
the history is encoded once (causally) and each candidate attends to the whole history and to
itself, never to another candidate (HSTU's ``num_targets`` mask, computed as a ``[m, history]``
block, not as a dense ``(history + m)^2`` matrix).

Inputs come through the schema (:func:`ctrlib.data.generative.sequence_schema`): three kinds of
left-padded ``[B, N]`` sequence features (0 = padding) — the ``item`` sequence, the ``action``
sequence (ids 1..A; the last id of its vocabulary is the placeholder "action unknown") and any
number of attribute sequences (every other ``Sequence`` of the schema, e.g. ``category``), each
summed into the item's content token — plus the timestamps (seconds), the schema extra named by
``timestamp``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, EmbeddingTable
from ctrlib.models.hstu import HSTUBlock, LN_EPS, causal_mask, next_timestamps


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

    ``GenerativeRanker(schema, embedding_dim, hidden, ...)``: ``embedding_dim`` is the model width
    (every token and block), ``hidden`` the prediction head's MLP layers. ``forward(batch) ->
    logits [B, N]``: the prediction for every event of the sequence, each from the history before
    it (teacher forcing: the true actions of earlier events). ``attention="softmax"`` uses
    softmax blocks; ``position_bias`` / ``time_bias`` switch the two halves of rab; ``leak=True``
    (DFGR only) breaks the mask on purpose (ablation); ``bind_actions=True`` (MetaGR only) adds each
    event's content embedding to its action token too, so an action token says which item it is
    about (a diagnostic: binding an action to its item then needs no attention hop).
    """

    def __init__(self, schema: Schema, embedding_dim: int = 32, hidden=(64,), num_blocks: int = 2,
                 num_heads: int = 1, mode: str = "dfgr", attention: str = "silu", position_bias: bool = True,
                 time_bias: bool = True, dropout: float = 0.0, leak: bool = False, bind_actions: bool = False,
                 item: str = "item_id",
                 action: str = "action", timestamp: str = "timestamp"):
        super().__init__()
        if mode not in ("dfgr", "metagr"):
            raise ValueError(f"mode must be 'dfgr' or 'metagr', got {mode!r}")
        if leak and mode != "dfgr":
            raise ValueError("leak is a DFGR ablation")
        if bind_actions and mode != "metagr":
            raise ValueError("bind_actions is a MetaGR diagnostic")
        sequences = {f.name: f for f in schema.sequences}
        for role, name in (("item", item), ("action", action)):
            if name not in sequences:
                raise KeyError(f"the {role} sequence {name!r} is not a Sequence of the schema; "
                               f"its sequences are {list(sequences)}")
        if timestamp not in schema.extras:
            raise KeyError(f"the timestamps {timestamp!r} must be an extra of the schema; its extras are "
                           f"{list(schema.extras)}")
        lengths = {f.max_len for f in sequences.values()}
        if len(lengths) > 1:
            raise ValueError(f"every sequence of the schema must have one length, got {lengths}")
        attrs = [f for f in schema.sequences if f.name not in (item, action)]
        self.schema, self.item, self.action, self.timestamp = schema, item, action, timestamp
        dim = embedding_dim
        self.mode, self.leak, self.bind_actions, self.dim = mode, leak, bind_actions, dim
        self.max_events = sequences[item].max_len
        # action ids: 0 pad, 1..A real actions, the last id (A + 1) the placeholder "action unknown"
        self.placeholder = sequences[action].vocab_size - 1
        self.item_emb = EmbeddingTable(sequences[item].vocab_size, dim, padding_idx=0)
        self.attr_emb = nn.ModuleDict({f.name: EmbeddingTable(f.vocab_size, dim, padding_idx=0) for f in attrs})
        self.action_emb = EmbeddingTable(sequences[action].vocab_size, dim, padding_idx=0)
        for e in (self.item_emb, *self.attr_emb.values(), self.action_emb):
            nn.init.normal_(e.weight, 0, 0.02)
        # + 1: candidates sit one position after the history (padded length n in eq. 2).
        max_len = (2 * self.max_events if mode == "metagr" else self.max_events) + 1
        self.blocks = nn.ModuleList(
            HSTUBlock(dim, num_heads, max_len=max_len, attention=attention, position_bias=position_bias,
                      time_bias=time_bias, dropout=dropout) for _ in range(num_blocks))
        self.head = MLP(dim, tuple(hidden), 1, dropout)

    # ------------------------------------------------------------------ tokens
    def _content(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item + attribute embeddings: ``[B, N, D]``."""
        c = self.item_emb(batch[self.item])
        for name, table in self.attr_emb.items():
            c = c + table(batch[name])
        return c

    def _readout(self, h):
        return self.head(F.layer_norm(h, (self.dim,), eps=LN_EPS)).squeeze(-1)

    # ------------------------------------------------------------------ context rows and target rows
    def _context_and_targets(self, block: HSTUBlock, xc, xt, t_c, qt_c, t_t, pos_c, pos_t, target_mask, valid_c):
        """One block over context rows ``xc [B, Nc, D]`` and target rows ``xt [B, Nt, D]``.

        Context rows attend causally to the context keys. Target row i attends to the context keys
        that ``target_mask [Nt, Nc]`` allows plus its own key, and no row attends to another target:
        an ``[Nt, Nc]`` score matrix and one extra column, never a dense ``(Nc + Nt)^2`` one. DFGR's
        training pass (context = the real flow, targets = the fake flow) and both models' serving
        pass (context = the history, targets = the candidates) are this one computation."""
        B, Nc, _ = xc.shape
        uc, vc, qc, kc = block.project(xc)
        ut, vt, qt, kt = block.project(xt)
        key_ok = valid_c[:, None, None, :]  # [B, 1, 1, Nc]: padding keys are never attended
        # context rows (HSTU convention: query time qt_c = the next token's timestamp)
        cc = causal_mask(Nc, xc.device) & (key_ok | torch.eye(Nc, dtype=torch.bool, device=xc.device))
        a_c = block.weights(block.scores(qc, kc, block.rab(pos_c, pos_c, qt_c, t_c)), cc)  # [B, H, Nc, Nc]
        av_c = torch.einsum("bhnm,bmhd->bnhd", a_c, vc).reshape(B, Nc, -1)
        # target rows: allowed context keys + own key (query time = the target's own time)
        s_tc = block.scores(qt, kc, block.rab(pos_t, pos_c, t_t, t_c))  # [B, H, Nt, Nc]
        s_tt = torch.einsum("bnhd,bnhd->bhn", qt, kt)  # [B, H, Nt]
        if block.attention == "softmax":
            s_tt = s_tt / block.qk_dim ** 0.5
        s_tt = s_tt + block.rab(pos_t[:1], pos_t[:1], t_t[:, :1], t_t[:, :1]).reshape(-1, 1, 1)  # j - i = 0, dt = 0
        if block.attention == "silu":  # pointwise weights: the own-key column needs no joint normaliser
            a_tc = block.weights(s_tc, target_mask & key_ok)  # [B, H, Nt, Nc]
            a_tt = block.weights(s_tt, torch.ones((), dtype=torch.bool))  # [B, H, Nt]
        else:  # softmax: normalise over [allowed context keys | own key] together
            ok = torch.cat([(target_mask & key_ok).expand(s_tc.shape),
                            torch.ones_like(s_tt[..., None], dtype=torch.bool)], dim=-1)
            a_t = block.weights(torch.cat([s_tc, s_tt.unsqueeze(-1)], dim=-1), ok)  # [B, H, Nt, Nc + 1]
            a_tc, a_tt = a_t[..., :Nc], a_t[..., Nc]
        av_t = (torch.einsum("bhnm,bmhd->bnhd", a_tc, vc)
                + a_tt.permute(0, 2, 1).unsqueeze(-1) * vt).reshape(B, xt.shape[1], -1)
        return block.output(xc, av_c, uc), block.output(xt, av_t, ut)

    # ------------------------------------------------------------------ DFGR: two flows
    def _dfgr(self, c, actions, t, valid):
        N = c.shape[1]
        xr = c + self.action_emb(actions)                                          # real flow  [B, N, D]
        xf = c + self.action_emb(torch.full_like(actions, self.placeholder))       # fake flow  [B, N, D]
        pos = torch.arange(N, device=c.device)
        c_mask = causal_mask(N, c.device)
        fake_mask = c_mask if self.leak else c_mask & ~torch.eye(N, dtype=torch.bool, device=c.device)
        for block in self.blocks:
            xr, xf = self._context_and_targets(block, xr, xf, t, next_timestamps(t), t, pos, pos, fake_mask, valid)
        return self._readout(xf)  # [B, N]

    # ------------------------------------------------------------------ MetaGR: interleaved
    def _interleave(self, c, actions, t, valid):
        """``[c_1, a_1, c_2, a_2, ...]`` tokens ``[B, 2N, D]``, with their timestamps and validity ``[B, 2N]``."""
        B, N, _ = c.shape
        a = self.action_emb(actions)
        if self.bind_actions:  # diagnostic: the action token also says which item it is about
            a = a + c
        x = torch.stack([c, a], dim=2).reshape(B, 2 * N, self.dim)
        return x, t.repeat_interleave(2, dim=1), valid.repeat_interleave(2, dim=1)

    def _metagr(self, c, actions, t, valid):
        x, tt, ok = self._interleave(c, actions, t, valid)
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        mask = interleaved_mask(c.shape[1], x.device) & (ok[:, None, :] | eye)  # [B, 2N, 2N]
        for block in self.blocks:
            x = block(x, tt, mask)
        return self._readout(x[:, 0::2])  # item tokens

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        items, t = batch[self.item], batch[self.timestamp]
        run = self._dfgr if self.mode == "dfgr" else self._metagr
        return run(self._content(batch), batch[self.action], t, items > 0)

    # ------------------------------------------------------------------ many candidates, one pass
    @torch.no_grad()
    def score_candidates(self, history: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, m]`` of ``m`` candidates (item, attribute and timestamp columns ``[B, m]``)
        after a history (``[B, n]`` columns as in ``forward``), in one forward pass. The history is
        encoded once (causally); each candidate sees the whole history and itself, never another
        candidate; all candidates sit at the position after the history."""
        actions, t, valid = history[self.action], history[self.timestamp], history[self.item] > 0
        ct = candidates[self.timestamp]
        B, n = valid.shape
        m, dev = ct.shape[1], ct.device
        xt = self._content(candidates)                                             # candidates [B, m, D]
        if self.mode == "dfgr":
            xc = self._content(history) + self.action_emb(actions)                 # real flow  [B, n, D]
            xt = xt + self.action_emb(torch.full_like(candidates[self.item], self.placeholder))
            t_c, valid_c = t, valid
        else:
            xc, t_c, valid_c = self._interleave(self._content(history), actions, t, valid)  # [B, 2n, D]
        nc = xc.shape[1]
        # query times: each history row's next token; the last history row's "next time" is the request
        qt_c = next_timestamps(torch.cat([t_c, ct[:, :1]], dim=1))[:, :nc]
        pos_c, pos_t = torch.arange(nc, device=dev), torch.full((m,), nc, device=dev)
        target_mask = torch.ones(m, nc, dtype=torch.bool, device=dev)
        for block in self.blocks:
            xc, xt = self._context_and_targets(block, xc, xt, t_c, qt_c, ct, pos_c, pos_t, target_mask, valid_c)
        return self._readout(xt)

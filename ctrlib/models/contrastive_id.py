"""Contrastive ID pre-training: stage 1 of "Taming the One-Epoch Phenomenon" (Hsu et al., RecSys 2024).

A minimal model, an item-ID table and nothing else, learns from pairs of items engaged by the same
user with an in-batch softmax (InfoNCE) over cosine similarities:

    s(a, b) = cos(e_a, e_b) / tau                                          (score of a pair)
    L = - 1/B sum_i log( exp s(a_i, b_i) / sum_j exp s(a_i, b_j) )         (in-batch negatives b_j)

It has almost no dense capacity to memorise rare ids, so it can be trained for many epochs; its
table then initialises the downstream CTR model's item table (:func:`ctrlib.train.transfer_embeddings`,
ids aligned because both tables are built from the same vocabulary). The paper's exact stage-1 model
is not public: item-item pairs, cosine scores, the temperature and in-batch negatives are our
reconstruction. With ``popularity`` (one value per row) each candidate's score is lowered by
``log p_j`` (the logQ sampling-bias correction of retrieval models); without it, plain InfoNCE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Categorical, Schema
from ctrlib.layers import FeatureEmbedding, eval_mode


class ContrastiveID(nn.Module):
    """Item-item InfoNCE on one table named ``table`` (the downstream schema's table of that name,
    so the rows line up). A batch holds ``table`` ids and ``context_<table>`` ids, one pair per row.
    Training: ``{"aux_loss": L}`` (fit trains it as a self-supervised model); eval: the pair logits ``[B]``."""

    self_supervised = True  # no label: fit minimises the returned aux_loss

    def __init__(self, schema: Schema, embedding_dim: int, table: str = "item_id", temperature: float = 0.1,
                 init_std: float = 1e-4, popularity: torch.Tensor | None = None):
        super().__init__()
        if table not in schema.tables:
            raise KeyError(f"ContrastiveID: the schema has no table {table!r}; it has {list(schema.tables)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        rows = schema.tables[table]
        self.table, self.context, self.temperature = table, f"context_{table}", temperature
        self.schema = Schema((Categorical(table, rows), Categorical(self.context, rows, embedding=table)))
        self.embedding = FeatureEmbedding(self.schema, embedding_dim, init_std)
        log_pop = None if popularity is None else torch.log(torch.as_tensor(popularity, dtype=torch.float32)
                                                            .clamp(min=1e-12))
        if log_pop is not None and log_pop.shape != (rows,):
            raise ValueError(f"popularity must hold one value per row of {table!r} ({rows}), "
                             f"got {tuple(log_pop.shape)}")
        self.register_buffer("log_popularity", log_pop, persistent=False)

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit vectors of item ids: ``[*ids.shape, D]``."""
        return F.normalize(self.embedding.lookup(self.table, ids), dim=-1)

    def similarity(self, batch) -> torch.Tensor:
        """``s(a_i, b_j)`` for every anchor i and context j of the batch: ``[B, B]``."""
        a, b = self.vectors(batch[self.table]), self.vectors(batch[self.context])   # [B, D], [B, D]
        s = a @ b.T / self.temperature                                                # [B, B]
        if self.log_popularity is not None:                                           # logQ correction
            s = s - self.log_popularity[batch[self.context]]
        return s

    def forward(self, batch):
        if not self.training:
            a, b = self.vectors(batch[self.table]), self.vectors(batch[self.context])
            return (a * b).sum(-1) / self.temperature                                 # [B] pair logits
        s = self.similarity(batch)                                                    # [B, B]
        target = torch.arange(len(s))
        return {"aux_loss": F.cross_entropy(s, target)}

    @torch.no_grad()
    def recall(self, pairs, k: int = 10, candidates: int = 1024) -> float:
        """Held-out pair recall@k: for chunks of ``candidates`` pairs, the share of anchors whose own
        context is among the k contexts of the chunk closest to them."""
        hits, n = 0, 0
        with eval_mode(self):
            for batch in pairs.batches(candidates):
                if len(batch[self.table]) < k + 1:
                    continue
                s = self.vectors(batch[self.table]) @ self.vectors(batch[self.context]).T    # [C, C]
                own = s.diagonal().unsqueeze(1)                                               # [C, 1]
                hits += int(((s > own).sum(1) < k).sum())
                n += len(s)
        if n == 0:
            raise ValueError(f"recall@{k} needs at least {k + 1} held-out pairs, got {len(pairs)}")
        return hits / n

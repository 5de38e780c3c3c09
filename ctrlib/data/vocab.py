"""Vocabularies: raw values -> ids, with 0 = padding and the last id = out-of-vocabulary."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PAD = 0


@dataclass(frozen=True)
class Vocab:
    """Maps known values to 1..n; padding is 0 and every unseen (or rare) value is n + 1."""

    values: tuple  # the known values, in id order (id = position + 1)

    @classmethod
    def fit(cls, values, min_count: int = 1) -> Vocab:
        """Keep values seen at least ``min_count`` times, most frequent first (ties by value)."""
        counts = pd.Series(values).value_counts(dropna=True)
        counts = counts[counts >= min_count]
        order = sorted(counts.index, key=lambda v: (-counts[v], str(v)))
        return cls(tuple(order))

    @property
    def size(self) -> int:
        """Number of embedding rows: padding + known values + OOV."""
        return len(self.values) + 2

    @property
    def oov(self) -> int:
        return len(self.values) + 1

    def encode(self, values) -> np.ndarray:
        """Ids for ``values`` (int64); unseen values map to the OOV id, missing ones to padding."""
        s = pd.Series(values)
        index = pd.Index(self.values)
        ids = index.get_indexer(s) + 1  # -1 (unknown) -> 0, fixed below
        ids = np.where(ids == 0, self.oov, ids)
        return np.where(s.isna().to_numpy(), PAD, ids).astype(np.int64)

    def decode(self, ids) -> list:
        ids = np.asarray(ids)
        return [None if i == PAD else ("<oov>" if i == self.oov else self.values[i - 1]) for i in ids]


def encode_columns(train: pd.DataFrame, others: list[pd.DataFrame], columns, min_count: int = 1):
    """Fit one vocabulary per column on ``train`` and encode ``train`` and ``others`` with it.

    Returns ``(vocabs, [train_encoded, *others_encoded])``; other columns are kept as they are.
    """
    missing = [c for c in columns if c not in train.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the frame (it has {list(train.columns)})")
    vocabs = {c: Vocab.fit(train[c], min_count) for c in columns}
    out = []
    for df in [train, *others]:
        df = df.copy()
        for c in columns:
            df[c] = vocabs[c].encode(df[c])
        out.append(df)
    return vocabs, out

"""Vocabularies: raw values -> ids, with 0 = padding and the last id = out-of-vocabulary."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C

PAD = 0
# pandas' inferred kind of a column -> what a vocabulary can match it with
_KINDS = {"integer": "number", "floating": "number", "mixed-integer-float": "number", "decimal": "number",
          "boolean": "bool", "string": "string", "bytes": "bytes", "mixed-integer": "mixed", "mixed": "mixed"}


def _kind(values) -> str | None:
    """'number', 'bool', 'string', 'bytes' or 'mixed' (None: empty or another kind, e.g. dates)."""
    return _KINDS.get(pd.api.types.infer_dtype(values, skipna=True))


def _name(values) -> str:
    name = getattr(values, "name", None)
    return f"column {name!r}" if name is not None else "the values"


@dataclass(frozen=True)
class Vocab:
    """Maps known values to 1..n; padding is 0 and every unseen (or rare) value is n + 1."""

    values: tuple  # the known values, in id order (id = position + 1)

    def __post_init__(self):
        if not pd.Index(self.values).is_unique:
            raise ValueError(f"Vocab values must be unique (1, 1.0 and True count as equal), got "
                             f"{C.examples(pd.Series(self.values)[pd.Index(self.values).duplicated()])} twice")

    @classmethod
    def fit(cls, values, min_count: int = 1) -> Vocab:
        """Keep values seen at least ``min_count`` times, most frequent first (ties by value).

        Warns when the values mix types: pandas matches 1, 1.0 and True as one value but '1' as
        another, which is rarely what the data meant."""
        C.integer("min_count", min_count, 1)
        if _kind(values) == "mixed":
            kinds = sorted({type(v).__name__ for v in pd.Series(values).dropna()})
            warnings.warn(f"Vocab.fit: {_name(values)} holds values of several types {kinds}: 1, 1.0 and "
                          f"True get one id, '1' another. Cast the column to one type first (e.g. .astype(str))",
                          stacklevel=2)
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
        mine, theirs = _kind(list(self.values)), _kind(s)
        if mine and theirs and "mixed" not in (mine, theirs) and mine != theirs:
            warnings.warn(f"Vocab.encode: {_name(values)} holds {theirs} values (e.g. "
                          f"{C.examples(s.dropna().iloc[:3])}) but the vocabulary holds {mine} values (e.g. "
                          f"{C.examples(self.values[:3])}): they never match, so every one maps to OOV. "
                          f"Cast the column to the vocabulary's type first", stacklevel=2)
        index = pd.Index(self.values)
        ids = index.get_indexer(s) + 1  # -1 (unknown) -> 0, fixed below
        ids = np.where(ids == 0, self.oov, ids)
        return np.where(s.isna().to_numpy(), PAD, ids).astype(np.int64)

    def decode(self, ids) -> list:
        """Values of ``ids`` (None for padding, ``'<oov>'`` for the OOV id)."""
        ids = np.asarray(ids).ravel()
        if ids.size == 0:
            return []
        if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= self.size:
            bad = ids if ids.dtype.kind not in "iu" else ids[(ids < 0) | (ids >= self.size)]
            raise ValueError(f"Vocab.decode: ids must be integers in [0, {self.size}) (0 = padding, "
                             f"{self.oov} = OOV), got {C.examples(bad)}")
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

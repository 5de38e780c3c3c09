"""Your own data in one call: frames (or CSV/Parquet files) -> schema, vocabularies and tensors.

>>> data = from_files("train.csv", "valid.csv", "test.csv", label="clicked")
>>> model = DeepFM(data.schema, 16, (128, 64)); fit(model, data.train, data.valid)

* Every vocabulary is fitted on the **training split only** (values seen at least ``min_count``
  times, as FuxiCTR's ``min_categr_count``); in the validation and test splits an unseen value
  gets the out-of-vocabulary id and a missing value the padding id 0. ``FrameData.oov_rate``
  says how often that happened per split and column.
* Columns are declared once: ``categorical`` (default: every column that is not the label,
  numeric, a sequence, an extra or ignored), ``numeric`` (finite floats), ``sequences``
  (``{column: max_len}`` or ``{column: {"max_len": L, "shares": "item_id"}}`` for a history that
  shares its vocabulary and embedding table with a categorical column; values are lists or
  ``sep``-joined strings, the last ``L`` kept, left-padded with 0) and ``extras`` (carried, not
  fed: e.g. ``user_id`` for GAUC).
* A column that is declared but missing from a split, or present in a split but not declared
  (a typo, an id column, a leaked label), is an error naming it; ``ignore=[...]`` drops columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Numeric, Schema, Sequence
from ctrlib.data.tensors import TensorData
from ctrlib.data.vocab import PAD, Vocab

SPLITS = ("train", "valid", "test")


@dataclass
class FrameData:
    """What :func:`from_frames` returns: the schema, the train-fitted vocabularies and the tensors."""
    schema: Schema
    vocabs: dict[str, Vocab]
    train: TensorData
    valid: TensorData | None = None
    test: TensorData | None = None
    oov_rate: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> column -> share of OOV ids

    @property
    def splits(self) -> dict[str, TensorData]:
        return {k: getattr(self, k) for k in SPLITS if getattr(self, k) is not None}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v):,}" for k, v in self.splits.items())
        return (f"FrameData({sizes}; {len(self.schema.categorical)} categorical, {len(self.schema.numeric)} numeric, "
                f"{len(self.schema.sequences)} sequence features; label {self.schema.label!r})")


def _sequence_specs(sequences) -> dict[str, dict]:
    specs = {}
    for name, spec in (sequences or {}).items():
        spec = {"max_len": spec} if not isinstance(spec, dict) else dict(spec)
        unknown = set(spec) - {"max_len", "shares"}
        if unknown or "max_len" not in spec:
            raise ValueError(f"sequence {name!r}: give max_len (an int) or {{'max_len': L, 'shares': column}}, "
                             f"got {spec!r}")
        C.integer(f"sequences[{name!r}] max_len", spec["max_len"], 1)
        specs[name] = spec
    return specs


def _tokens(col: pd.Series, sep: str) -> list[list]:
    """Each row's tokens: a list/array as it is, a string split on ``sep``, a missing value as []."""
    out = []
    for v in col.to_numpy(dtype=object):
        if isinstance(v, str):
            out.append([t for t in v.split(sep) if t != ""])
        elif v is None or (np.isscalar(v) and pd.isna(v)):
            out.append([])
        elif hasattr(v, "__len__"):
            out.append(list(v))
        else:
            raise TypeError(f"sequence column {col.name!r} holds {type(v).__name__} values (e.g. {v!r}); give lists "
                            f"or strings joined by {sep!r}")
    return out


def _str_values(col: pd.Series) -> pd.Series:
    """A column as strings (missing values stay missing): a shared vocabulary matches '7' with 7."""
    return col.astype(object).where(col.isna(), col.astype(str))


def _encode_sequence(tokens: list[list], vocab: Vocab, max_len: int) -> np.ndarray:
    """``[N, max_len]`` ids: the last ``max_len`` tokens of each row, left-padded with 0."""
    lengths = np.array([min(len(t), max_len) for t in tokens], dtype=np.int64)
    flat = [x for t in tokens for x in t[len(t) - min(len(t), max_len):]]
    ids = vocab.encode(pd.Series(flat, dtype=object)) if flat else np.zeros(0, dtype=np.int64)
    out = np.full((len(tokens), max_len), PAD, dtype=np.int64)
    rows = np.repeat(np.arange(len(tokens)), lengths)
    cols = np.concatenate([np.arange(max_len - n, max_len) for n in lengths]) if len(tokens) else np.zeros(0, int)
    out[rows, cols] = ids
    return out


def _check_columns(frames: dict[str, pd.DataFrame], used: list[str], label: str, ignore) -> None:
    train_cols = set(frames["train"].columns)
    for split, df in frames.items():
        missing = [c for c in [label, *used] if c not in df.columns]
        if missing:
            raise KeyError(f"the {split} frame lacks the declared columns {missing} (it has {list(df.columns)}); "
                           f"every split needs the label and every declared column")
        undeclared = [c for c in df.columns if c not in used and c != label and c not in ignore]
        if undeclared:
            unseen = [c for c in undeclared if c not in train_cols]
            what = (f"columns {unseen} that the train frame does not have" if unseen
                    else f"columns {undeclared} that are not declared")
            raise ValueError(f"the {split} frame has {what}: declare them (categorical=, numeric=, sequences=, "
                             f"extras=) or pass ignore={undeclared!r}")


def from_frames(train: pd.DataFrame, valid: pd.DataFrame | None = None, test: pd.DataFrame | None = None, *,
                categorical=None, numeric=(), sequences=None, label: str = "label", min_count: int = 1,
                extras=(), ignore=(), sep: str = "|") -> FrameData:
    """Frames -> :class:`FrameData` (schema, vocabularies fitted on ``train``, TensorData per split).
    See the module docstring for what each argument declares."""
    frames = {"train": train, "valid": valid, "test": test}
    frames = {k: v for k, v in frames.items() if v is not None}
    for split, df in frames.items():
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_frames: {split} must be a pandas DataFrame (or None), got {type(df).__name__}")
        if len(df) == 0:
            raise ValueError(f"from_frames: the {split} frame has no rows")
    C.integer("min_count", min_count, 1)
    numeric, extras, ignore = list(numeric), list(extras), list(ignore)
    seqs = _sequence_specs(sequences)
    if label not in train.columns:
        raise KeyError(f"no label column {label!r} in the train frame (it has {list(train.columns)}); pass label=")
    if categorical is None:
        taken = {label, *numeric, *seqs, *extras, *ignore}
        categorical = [c for c in train.columns if c not in taken]
    categorical = list(categorical)
    used = categorical + numeric + list(seqs) + extras
    dup = sorted({c for c in used if used.count(c) > 1})
    if dup or label in used:
        raise ValueError(f"columns declared twice: {dup or [label]} (the label cannot be a feature either)")
    for name, spec in seqs.items():
        if spec.get("shares") is not None and spec["shares"] not in categorical:
            raise ValueError(f"sequence {name!r} shares {spec['shares']!r}, which is not a categorical column "
                             f"({categorical})")
    _check_columns(frames, used, label, ignore)

    vocabs: dict[str, Vocab] = {}
    shared = {spec["shares"] for spec in seqs.values() if spec.get("shares")}  # matched as strings
    column = {c: (lambda col, c=c: _str_values(col) if c in shared else col) for c in categorical}
    shared_tokens = {c: [] for c in categorical}
    train_tokens = {name: _tokens(train[name], sep) for name in seqs}
    for name, spec in seqs.items():
        if spec.get("shares"):
            train_tokens[name] = [[str(x) for x in t] for t in train_tokens[name]]
            shared_tokens[spec["shares"]].extend(x for t in train_tokens[name] for x in t)
    for c in categorical:
        values = column[c](train[c]).astype(object)
        if shared_tokens[c]:
            values = pd.concat([values, pd.Series(shared_tokens[c], dtype=object)], ignore_index=True)
        vocabs[c] = Vocab.fit(values.rename(c), min_count)
    for name, spec in seqs.items():
        if not spec.get("shares"):
            flat = pd.Series([x for t in train_tokens[name] for x in t], dtype=object, name=name)
            vocabs[name] = Vocab.fit(flat, min_count)

    features = [Categorical(c, vocabs[c].size) for c in categorical]
    features += [Numeric(c) for c in numeric]
    for name, spec in seqs.items():
        table = spec.get("shares")
        vocab = vocabs[table] if table else vocabs[name]
        features.append(Sequence(name, vocab.size, spec["max_len"], embedding=table))
    schema = Schema(tuple(features), (label,), tuple(extras))

    out, oov = {}, {}
    for split, df in frames.items():
        enc = pd.DataFrame({label: df[label].to_numpy()})
        rates = {}
        for c in categorical:
            enc[c] = vocabs[c].encode(column[c](df[c]))
            rates[c] = float(np.mean(enc[c].to_numpy() == vocabs[c].oov))
        for c in numeric + extras:
            enc[c] = df[c].to_numpy()
        for name, spec in seqs.items():
            vocab = vocabs[spec["shares"]] if spec.get("shares") else vocabs[name]
            tokens = train_tokens[name] if split == "train" else _tokens(df[name], sep)
            tokens = [[str(x) for x in t] for t in tokens] if spec.get("shares") else tokens
            ids = _encode_sequence(tokens, vocab, spec["max_len"])
            enc[name] = list(ids)
            known = ids[ids != PAD]
            rates[name] = float(np.mean(known == vocab.oov)) if known.size else 0.0
        out[split] = TensorData.from_frame(enc, schema)
        oov[split] = rates
    return FrameData(schema, vocabs, out["train"], out.get("valid"), out.get("test"), oov)


def read_table(path, columns_as_str=None, nrows: int | None = None) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``), TSV (``.tsv``, ``.txt``) or Parquet file as a DataFrame; the
    ``columns_as_str`` columns (ids; default: all) are read as strings so that '007' stays '007'."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        df = pd.read_parquet(path)
        df = df.head(nrows) if nrows is not None else df
        keep = df.columns if columns_as_str is None else [c for c in columns_as_str if c in df.columns]
        return df.astype({c: str for c in keep})
    sep = "\t" if name.endswith((".tsv", ".tsv.gz", ".txt")) else ","
    header = pd.read_csv(path, sep=sep, nrows=0).columns
    dtype = {c: str for c in (header if columns_as_str is None else columns_as_str) if c in header}
    return pd.read_csv(path, sep=sep, dtype=dtype, nrows=nrows)


def from_files(train, valid=None, test=None, **kwargs) -> FrameData:
    """:func:`from_frames` on files (CSV, TSV or Parquet; see :func:`read_table`). Categorical and
    sequence columns are read as strings, the label, numeric and extra columns as numbers."""
    numbers = {kwargs.get("label", "label"), *kwargs.get("numeric", ()), *kwargs.get("extras", ())}
    header = read_table(train, columns_as_str=[], nrows=0).columns
    as_str = [c for c in header if c not in numbers]
    frames = [read_table(p, columns_as_str=as_str) if p is not None else None for p in (train, valid, test)]
    return from_frames(*frames, **kwargs)


__all__ = ["FrameData", "from_frames", "from_files", "read_table"]

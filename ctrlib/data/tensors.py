"""Batches sliced from pre-built tensors: no per-row Python in the training loop."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Numeric, Schema, Sequence, Timestamp


class TensorData:
    """A dict of equally long tensors, served as dict batches.

    >>> data = TensorData.from_frame(df, schema)
    >>> for batch in data.batches(1024, shuffle=True, seed=0): ...
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all tensors must have the same length, got {lengths}")
        self.tensors = tensors

    @classmethod
    def from_frame(cls, df: pd.DataFrame, schema: Schema, extras: tuple[str, ...] = ()) -> TensorData:
        """Tensors for every schema column of ``df`` (sequence columns hold equal-length arrays).

        Every column is checked against the schema (ids integral and within the feature's vocabulary,
        numeric values finite and of the declared width, labels in [0, 1]) and copied, so the
        tensors never share memory with ``df``."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_frame needs a pandas DataFrame, got {type(df).__name__}")
        if not isinstance(schema, Schema):
            raise TypeError(f"from_frame needs a Schema, got {type(schema).__name__}")
        wanted = schema.columns + [c for c in extras if c not in schema.columns]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise KeyError(f"the frame lacks columns {missing} that the schema needs; "
                           f"it has {list(df.columns)}")
        if len(df) == 0:
            raise ValueError("the frame has no rows; check the split or filter that produced it")
        tensors = {}
        for f in schema.features:
            col = df[f.name]
            if isinstance(f, Sequence):
                tensors[f.name] = torch.from_numpy(C.ids(f.name, _stack(col, f.name, f.max_len), f.vocab_size))
            elif isinstance(f, Categorical):
                tensors[f.name] = torch.from_numpy(C.ids(f.name, col.to_numpy(), f.vocab_size))
            elif isinstance(f, Numeric):
                arr = _stack(col, f.name, f.dim) if f.dim > 1 else col.to_numpy()
                tensors[f.name] = torch.from_numpy(C.finite_floats(f.name, arr))
            elif isinstance(f, Timestamp):
                tensors[f.name] = _timestamps(f, col)
        for name in schema.labels:
            tensors[name] = torch.from_numpy(C.labels(name, df[name].to_numpy()))
        for name in wanted[len(schema.features) + len(schema.labels):]:
            tensors[name] = torch.from_numpy(C.column_values(name, df[name].to_numpy()))
        return cls(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values()))) if self.tensors else 0

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def subset(self, index) -> TensorData:
        index = torch.as_tensor(index)
        return TensorData({k: v[index] for k, v in self.tensors.items()})

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | None = None,
                keys=None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield dict batches. Shuffling permutes every tensor once per call, then slices views."""
        keys = list(self.tensors) if keys is None else list(keys)
        tensors = {k: self.tensors[k] for k in keys}
        if shuffle:
            g = torch.Generator().manual_seed(0 if seed is None else seed)
            perm = torch.randperm(len(self), generator=g)
            tensors = {k: v[perm] for k, v in tensors.items()}
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in tensors.items()}

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def _timestamps(f: Timestamp, col: pd.Series) -> torch.Tensor:
    """A timestamp column as int64 seconds: ``[N]``, or ``[N, max_len]`` from equal-length arrays."""
    if f.max_len is None:
        arr = col.to_numpy()
    else:
        arr = _stack(col, f.name, f.max_len) if len(col) else np.zeros((0, f.max_len), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"timestamp {f.name!r} must hold integer seconds, got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _stack(col: pd.Series, name: str, width: int) -> np.ndarray:
    """A column of equal-length arrays as ``[N, width]``, or an error naming the column and the lengths."""
    try:
        arr = np.stack(col.to_numpy())
    except (TypeError, ValueError):  # ragged, scalars or missing values among the arrays
        lengths = col.map(lambda v: len(v) if hasattr(v, "__len__") else None)
        counts = lengths.value_counts(dropna=False).to_dict()
        raise ValueError(f"column {name!r} must hold arrays of length {width} in every row; found lengths "
                         f"{counts} (length: rows; None = not an array). Pad or cut every row to "
                         f"{width} (left-pad sequences with 0)") from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"column {name!r} must hold arrays of length {width} in every row; they stack to "
                         f"shape {arr.shape}. Declare the feature with that width or fix the column")
    return arr

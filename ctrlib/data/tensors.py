"""Batches sliced from pre-built tensors: no per-row Python in the training loop."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from ctrlib.data.schema import Categorical, Numeric, Schema, Sequence, Timestamp


def _timestamps(f: Timestamp, col: pd.Series) -> torch.Tensor:
    """A timestamp column as int64 seconds: ``[N]``, or ``[N, max_len]`` from equal-length arrays."""
    if f.max_len is None:
        arr = col.to_numpy()
    else:
        arr = np.stack(col.to_numpy()) if len(col) else np.zeros((0, f.max_len), dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != f.max_len:
            raise ValueError(f"timestamp sequence {f.name!r} must hold arrays of length {f.max_len}, "
                             f"got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"timestamp {f.name!r} must hold integer seconds, got dtype {arr.dtype}")
    return torch.as_tensor(arr.astype(np.int64))


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
    def from_frame(cls, df: pd.DataFrame, schema: Schema, extras: tuple[str, ...] = ()) -> "TensorData":
        """Tensors for every schema column of ``df`` (sequence columns hold equal-length arrays)."""
        wanted = schema.columns + [c for c in extras if c not in schema.columns]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise KeyError(f"the frame lacks columns {missing} that the schema needs; "
                           f"it has {list(df.columns)}")
        tensors = {}
        for f in schema.features:
            col = df[f.name]
            if isinstance(f, Sequence):
                arr = np.stack(col.to_numpy()) if len(col) else np.zeros((0, f.max_len))
                if arr.ndim != 2 or arr.shape[1] != f.max_len:
                    raise ValueError(f"sequence {f.name!r} must hold arrays of length {f.max_len}, "
                                     f"got shape {arr.shape}")
                tensors[f.name] = torch.as_tensor(arr, dtype=torch.long)
            elif isinstance(f, Categorical):
                tensors[f.name] = torch.tensor(col.to_numpy(), dtype=torch.long)
            elif isinstance(f, Numeric):
                arr = np.stack(col.to_numpy()) if f.dim > 1 else col.to_numpy()
                tensors[f.name] = torch.as_tensor(arr, dtype=torch.float32)
            elif isinstance(f, Timestamp):
                tensors[f.name] = _timestamps(f, col)
        for f in schema.id_features:
            t = tensors[f.name]
            if len(t) and (int(t.min()) < 0 or int(t.max()) >= f.vocab_size):
                raise ValueError(f"feature {f.name!r} has ids in [{int(t.min())}, {int(t.max())}] "
                                 f"outside its vocabulary [0, {f.vocab_size}); encode it with a Vocab "
                                 f"or raise vocab_size")
        for name in schema.labels:
            tensors[name] = torch.tensor(df[name].to_numpy(), dtype=torch.float32)
        for name in wanted[len(schema.features) + len(schema.labels):]:
            values = df[name].to_numpy()
            tensors[name] = torch.tensor(values)
        return cls(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values()))) if self.tensors else 0

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def subset(self, index) -> "TensorData":
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

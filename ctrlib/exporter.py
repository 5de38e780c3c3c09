"""Export a model for serving (ONNX or ``torch.export``), checked against eager on the spot.

>>> result = ctrlib.export(model, example_batch, "deepfm.onnx", format="onnx")
>>> result.max_abs_error          # artefact vs eager on the example batch and on its first row
>>> served = ctrlib.load_exported("deepfm.onnx")
>>> served(batch)                 # numpy logits [B], any B

The batch dimension is dynamic: one artefact serves B = 1 and B = 512. The artefact's inputs are the
schema's feature columns (labels and extras are dropped from the example batch). An exported graph
cannot raise on a data-dependent condition, so the embedding layer's id-range check is skipped
while tracing; :class:`Exported` checks every id against its feature's ``vocab_size`` before
running the artefact instead. ``torch.onnx.export`` reads a trailing dict in ``args`` as keyword
arguments, so the batch dict goes in ``kwargs={"batch": ...}``.

Two-tower models are served as two artefacts (:func:`export_towers`): the item tower runs offline
over the catalogue, the user tower per request, and logit = <u, v> + bias.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctrlib.data.schema import Categorical, Sequence
from ctrlib.layers import eval_mode
from ctrlib.serving import atomic_write

FORMATS = ("onnx", "torch")


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_error: float      # artefact vs eager, over the example batch and its first row alone
    inputs: list[str]
    batch_sizes: tuple[int, ...]


class _Part(nn.Module):
    """One method of a model as a module (the two-tower model's ``user_vector`` / ``item_vector``)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch):
        return getattr(self.model, self.method)(batch)


def _feature_batch(model: nn.Module, batch: dict, features=None) -> dict[str, torch.Tensor]:
    schema = getattr(model, "schema", None)
    names = list(features) if features is not None else [f.name for f in schema.features]
    missing = [n for n in names if n not in batch]
    if missing:
        raise KeyError(f"export: the example batch lacks features {missing}; it has {list(batch)}")
    out = {n: torch.as_tensor(batch[n]) for n in names}
    if len(next(iter(out.values()))) < 2:
        raise ValueError("export: give an example batch of at least 2 rows, so the batch size is traced as dynamic")
    return out


def _id_limits(model: nn.Module, names) -> dict[str, int]:
    schema = model.schema
    return {n: schema[n].vocab_size for n in names if isinstance(schema[n], (Categorical, Sequence))}


def export(model: nn.Module, example_batch: dict, path: str | os.PathLike, format: str = "onnx",
           atol: float = 1e-5, features=None, _module: nn.Module | None = None) -> ExportResult:
    """Export ``model`` (in eval mode) with a dynamic batch size to ``path`` and check it against eager.

    ``format="onnx"`` (run by onnxruntime) or ``"torch"`` (``torch.export``, a ``.pt2`` file). The
    parity check runs the artefact on ``example_batch`` and on its first row alone and raises when
    the largest absolute difference from eager logits exceeds ``atol``. A sidecar ``<path>.json``
    records the inputs, the id limits and the measured error; both files are written atomically."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    module = _module if _module is not None else model
    batch = _feature_batch(model, example_batch, features)
    names = list(batch)
    dim = torch.export.Dim("batch", min=1)
    shapes = {"batch": {n: {0: dim} for n in names}}
    path = Path(path)
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "onnx":
            import logging
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(module, (), kwargs={"batch": batch}, dynamo=True, dynamic_shapes=shapes,
                                        input_names=names, output_names=["logits"], verbose=False)
            atomic_write(path, lambda tmp: program.save(tmp))
        else:
            program = torch.export.export(module, (), kwargs={"batch": batch}, dynamic_shapes=shapes)
            atomic_write(path, lambda tmp: torch.export.save(program, tmp))
        meta = {"format": format, "inputs": names, "id_limits": _id_limits(model, names),
                "dtypes": {n: str(v.dtype).removeprefix("torch.") for n, v in batch.items()}}
        served = Exported(path, meta)
        error = 0.0
        for rows in (batch, {n: v[:1] for n, v in batch.items()}):
            eager = module(rows).float().numpy()
            error = max(error, float(np.abs(served(rows) - eager).max()))
    meta["max_abs_error"] = error
    atomic_write(Path(f"{path}.json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    if not error <= atol:
        raise ValueError(f"export: the {format} artefact differs from eager by up to {error:.3g} (> atol {atol:g})")
    return ExportResult(path, format, error, names, (len(next(iter(batch.values()))), 1))


def export_towers(model: nn.Module, example_batch: dict, directory: str | os.PathLike, format: str = "onnx",
                  atol: float = 1e-5) -> dict[str, ExportResult]:
    """A two-tower model's towers as two artefacts, ``user.<ext>`` (user features -> u) and
    ``item.<ext>`` (item features -> v), each checked against eager; logit = <u, v> + ``model.bias``."""
    for method in ("user_vector", "item_vector"):
        if not hasattr(model, method):
            raise TypeError(f"export_towers needs a two-tower model (with {method}), got {type(model).__name__}")
    ext = "onnx" if format == "onnx" else "pt2"
    directory = Path(directory)
    return {side: export(model, example_batch, directory / f"{side}.{ext}", format, atol,
                         features=getattr(model, f"{side}_features"), _module=_Part(model, f"{side}_vector"))
            for side in ("user", "item")}


class Exported:
    """An exported artefact as a function: a batch dict (tensors or arrays) -> numpy outputs.

    Checks that every input is present and every id within its feature's vocabulary (what the
    eager model checks itself), then runs onnxruntime (``threads`` intra-op threads; None: its
    default) or the ``torch.export`` program."""

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, threads: int | None = None):
        path = Path(path)
        self.meta = meta if meta is not None else json.loads(Path(f"{path}.json").read_text())
        self.inputs, self.limits = self.meta["inputs"], self.meta["id_limits"]
        if self.meta["format"] == "onnx":
            import onnxruntime as ort
            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.program = None
        else:
            self.session, self.program = None, torch.export.load(str(path)).module()

    def check(self, batch) -> None:
        missing = [n for n in self.inputs if n not in batch]
        if missing:
            raise KeyError(f"the batch lacks inputs {missing} of this artefact (it reads {self.inputs})")
        for name, limit in self.limits.items():
            ids = np.asarray(batch[name])
            if ids.size and (ids.min() < 0 or ids.max() >= limit):
                raise IndexError(f"feature {name!r} has ids outside [0, {limit}): encode raw values with the "
                                 f"model's vocabularies (ctrlib.load(...).encode)")

    def __call__(self, batch) -> np.ndarray:
        self.check(batch)
        if self.session is not None:
            feed = {n: np.ascontiguousarray(np.asarray(batch[n])) for n in self.inputs}
            return self.session.run(None, feed)[0]
        with torch.no_grad():
            return self.program(batch={n: torch.as_tensor(batch[n]) for n in self.inputs}).numpy()


def load_exported(path: str | os.PathLike, threads: int | None = None) -> Exported:
    """An artefact written by :func:`export` (its sidecar ``<path>.json`` beside it)."""
    return Exported(path, threads=threads)

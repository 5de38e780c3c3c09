"""Save and load a trained model with its feature encoding: one bundle file serves raw rows.

>>> ctrlib.save("deepfm.ctrlib", model, schema, vocabs, config={"embedding_dim": 8, "hidden": [64]})
>>> bundle = ctrlib.load("deepfm.ctrlib")          # in another process, on another day
>>> bundle.predict(raw_rows)                       # a DataFrame of raw values -> click probabilities

A bundle holds the model's class name and constructor arguments (``config``: the model is rebuilt
as ``Model(schema, **config)``), the schema, one vocabulary per encoded feature and the state dict.
It is read with ``torch.load(weights_only=True)`` only (plain containers and tensors, no pickled
code), written atomically, and checked on both sides: a vocabulary whose size is not its feature's
``vocab_size``, a schema that is not the caller's, or weights that do not fit the rebuilt model
fail with an error naming the feature. Raw values are encoded with the saved vocabularies, so an
unseen value maps to the out-of-vocabulary id it mapped to in training.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ctrlib.data.schema import Categorical, Numeric, Schema, Sequence, Timestamp
from ctrlib.data.tensors import TensorData
from ctrlib.data.vocab import PAD, Vocab

FORMAT, VERSION = "ctrlib-bundle", 1
_KINDS = {cls.__name__: cls for cls in (Categorical, Numeric, Sequence, Timestamp)}


def atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(tmp_path)`` into a temp file beside ``path``, then rename it over ``path``: a reader
    never sees half a file, and a failed write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temp name keeps the suffix: torch.export.save wants a name ending in .pt2
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------- schema and vocabularies
def schema_to_dict(schema: Schema) -> dict:
    """The schema as plain containers (what ``weights_only`` loading accepts)."""
    return {"features": [{"kind": type(f).__name__, **dataclasses.asdict(f)} for f in schema.features],
            "labels": list(schema.labels), "extras": list(schema.extras)}


def schema_from_dict(d: dict) -> Schema:
    features = []
    for spec in d["features"]:
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind not in _KINDS:
            raise ValueError(f"the bundle's feature {spec.get('name')!r} has an unknown kind {kind!r}")
        features.append(_KINDS[kind](**spec))
    return Schema(tuple(features), tuple(d["labels"]), tuple(d["extras"]))


def schema_differences(saved: Schema, mine: Schema) -> list[str]:
    """One line per feature (or label list) that differs between two schemas; empty when equal."""
    a, b = {f.name: f for f in saved.features}, {f.name: f for f in mine.features}
    out = [f"feature {n!r}: saved {a.get(n, 'absent')}, expected {b.get(n, 'absent')}"
           for n in dict.fromkeys([*a, *b]) if a.get(n) != b.get(n)]
    if [f.name for f in saved.features] != [f.name for f in mine.features] and not out:
        out.append(f"the features in another order: saved {list(a)}, expected {list(b)}")
    if saved.labels != mine.labels:
        out.append(f"labels: saved {saved.labels}, expected {mine.labels}")
    return out


def _plain(value, feature: str):
    """A vocabulary value as a Python scalar (numpy scalars -> int/float/bool/str)."""
    value = value.item() if isinstance(value, np.generic) else value
    if not isinstance(value, (str, int, float, bool, bytes)):
        raise TypeError(f"the vocabulary of feature {feature!r} holds a {type(value).__name__} value "
                        f"({value!r}); a bundle stores str, int, float, bool or bytes values only")
    return value


def _vocab_for(feature, vocabs: dict) -> Vocab | None:
    """A feature's vocabulary: under its own name, else under its embedding table's (a history
    sequence shares its target's, e.g. ``hist_item_id`` reads ``item_id``'s)."""
    return vocabs.get(feature.name, vocabs.get(getattr(feature, "table", None)))


def check_vocabs(schema: Schema, vocabs: dict[str, Vocab]) -> None:
    """Every vocabulary belongs to an id feature (or table) and has exactly its ``vocab_size`` ids."""
    names = {f.name for f in schema.id_features} | {f.table for f in schema.id_features}
    for name, vocab in vocabs.items():
        if name not in names:
            raise KeyError(f"vocabulary {name!r} belongs to no id feature of the schema "
                           f"(id features: {sorted(f.name for f in schema.id_features)})")
        if not isinstance(vocab, Vocab):
            raise TypeError(f"the vocabulary of feature {name!r} must be a ctrlib Vocab, got {type(vocab).__name__}")
    for f in schema.id_features:
        vocab = _vocab_for(f, vocabs)
        if vocab is not None and vocab.size != f.vocab_size:
            raise ValueError(f"feature {f.name!r}: its vocabulary has {vocab.size} ids (padding + "
                             f"{len(vocab.values)} values + OOV) but the schema gives vocab_size {f.vocab_size}; "
                             f"the ids would land on other rows. Build the schema from the same vocabularies")


# ----------------------------------------------------------------------------- the bundle
@dataclass
class Bundle:
    """A loaded model (in eval mode) with its schema, vocabularies and constructor config."""

    model: nn.Module
    schema: Schema
    vocabs: dict[str, Vocab]
    config: dict

    def encode(self, rows: pd.DataFrame) -> TensorData:
        """Raw rows -> the model's tensors (:func:`encode_rows` with this bundle's vocabularies)."""
        return encode_rows(rows, self.schema, self.vocabs)

    def predict(self, rows: pd.DataFrame, batch_size: int = 16_384):
        """Click probabilities of raw rows (see :meth:`encode`)."""
        from ctrlib.train import predict
        return predict(self.model, self.encode(rows), batch_size)


def encode_rows(rows: pd.DataFrame, schema: Schema, vocabs: dict[str, Vocab]) -> TensorData:
    """Raw rows -> tensors: every feature with a vocabulary is encoded with it (unseen -> OOV,
    missing -> padding); a sequence (a list of raw values per row) keeps its last ``max_len``
    values, left-padded with 0; other features are taken as they are. Labels may be absent."""
    rows = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    missing = [f.name for f in schema.features if f.name not in rows.columns]
    if missing:
        raise KeyError(f"the rows lack features {missing} that the model reads; they have {list(rows.columns)}")
    df = pd.DataFrame(index=rows.index)
    for f in schema.features:
        vocab = _vocab_for(f, vocabs) if isinstance(f, (Categorical, Sequence)) else None
        col = rows[f.name]
        if vocab is None:
            df[f.name] = col
        elif isinstance(f, Sequence):
            df[f.name] = list(_encode_sequences(f, col, vocab))
        else:
            df[f.name] = vocab.encode(col.to_numpy())
    for label in schema.labels:  # serving rows have no label; from_frame wants one column per label
        df[label] = rows[label] if label in rows.columns else np.zeros(len(rows), np.float32)
    return TensorData.from_frame(df, Schema(schema.features, schema.labels))


def _encode_sequences(f: Sequence, col: pd.Series, vocab: Vocab):
    for i, values in enumerate(col):
        if values is None:
            values = []
        if not isinstance(values, (list, tuple, np.ndarray, pd.Series)):
            raise TypeError(f"sequence {f.name!r}, row {i}: expected a list of raw values, got {values!r}")
        ids = vocab.encode(pd.Series(list(values), dtype=object)) if len(values) else np.zeros(0, np.int64)
        ids = ids[ids != PAD][-f.max_len:]  # the last max_len real behaviours
        yield np.concatenate([np.zeros(f.max_len - len(ids), np.int64), ids])


def _model_class(name: str):
    import ctrlib.models as models
    if name not in models.MODELS:
        raise ValueError(f"a bundle holds models built as Model(schema, **config) from ctrlib.models "
                         f"({', '.join(models.MODELS)}); got {name!r}")
    return getattr(models, name)


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def save(path: str | os.PathLike, model: nn.Module, schema: Schema, vocabs: dict[str, Vocab] | None = None,
         config: dict | None = None) -> Path:
    """Write ``model`` with its ``schema``, ``vocabs`` (feature or table name -> :class:`Vocab`) and
    ``config`` (the keyword arguments that rebuild it: ``type(model)(schema, **config)``) to one file.

    Checked before anything is written: the model's own schema is ``schema``, every vocabulary has
    its feature's ``vocab_size`` ids, and ``config`` rebuilds a model with the same parameter names
    and shapes. Features without a vocabulary are served as the ids (or numbers) they are."""
    vocabs, config = dict(vocabs or {}), dict(config or {})
    cls = _model_class(type(model).__name__)
    if type(model) is not cls:
        raise TypeError(f"save: {type(model).__qualname__} is not ctrlib.models.{cls.__name__}")
    own = getattr(model, "schema", None)
    if own is not None and own != schema:
        raise ValueError("save: the model was built with another schema: " + "; ".join(schema_differences(own, schema)))
    check_vocabs(schema, vocabs)
    mine = _shapes(model)
    rebuilt = _shapes(cls(schema, **config))
    if mine != rebuilt:
        diff = [f"{k}: model {mine.get(k, 'absent')}, rebuilt {rebuilt.get(k, 'absent')}"
                for k in dict.fromkeys([*mine, *rebuilt]) if mine.get(k) != rebuilt.get(k)]
        raise ValueError(f"save: {cls.__name__}(schema, **config) does not rebuild this model, so the bundle could "
                         f"not be loaded: {'; '.join(diff[:5])}. Pass the constructor's arguments as config")
    from ctrlib import __version__
    payload = {
        "format": FORMAT, "version": VERSION, "ctrlib": __version__, "model": cls.__name__, "config": config,
        "schema": schema_to_dict(schema),
        "vocabs": {name: [_plain(v, name) for v in vocab.values] for name, vocab in vocabs.items()},
        "state_dict": {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
                       for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | os.PathLike, schema: Schema | None = None) -> Bundle:
    """Read a bundle written by :func:`save` (``torch.load(weights_only=True)``) and rebuild its model
    in eval mode. With ``schema``, the bundle's must equal it (an error names each differing feature)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no bundle at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable ctrlib bundle ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ctrlib bundle (no {FORMAT!r} header)")
    if payload["version"] != VERSION:
        raise ValueError(f"{path} is a bundle of format version {payload['version']}; this ctrlib reads {VERSION}")
    saved = schema_from_dict(payload["schema"])
    if schema is not None:
        diff = schema_differences(saved, schema)
        if diff:
            raise ValueError(f"{path} was saved with another schema: {'; '.join(diff)}")
    vocabs = {name: Vocab(tuple(values)) for name, values in payload["vocabs"].items()}
    check_vocabs(saved, vocabs)
    model = _model_class(payload["model"])(saved, **payload["config"])
    mine, theirs = _shapes(model), {k: tuple(v.shape) for k, v in payload["state_dict"].items()
                                   if isinstance(v, torch.Tensor)}
    if mine != theirs:
        diff = [f"{k}: saved {theirs.get(k, 'absent')}, rebuilt {mine.get(k, 'absent')}"
                for k in dict.fromkeys([*theirs, *mine]) if theirs.get(k) != mine.get(k)]
        raise ValueError(f"{path}: the saved weights do not fit {payload['model']}(schema, **config): "
                         f"{'; '.join(diff[:5])}")
    model.load_state_dict(payload["state_dict"])
    return Bundle(model.eval(), saved, vocabs, payload["config"])

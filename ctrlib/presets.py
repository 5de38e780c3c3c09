"""Training presets, and FuxiCTR/BARS config keys translated to ctrlib's names.

``preset("bars")`` is the training of the BARS benchmark (FuxiCTR's ``BaseModel.fit``, which BARS ran):

* Adam, lr 1e-3, batch 4096, up to 100 epochs, early stopping on the validation AUC, patience 2,
  the best epoch's weights restored;
* the learning rate multiplied by 0.1 after every epoch that does not improve (FuxiCTR's
  reduce-LR-on-plateau), ``lr_decay=0.1``;
* the gradient norm clipped at 10, ``grad_clip=10``;
* the embedding L2 ``lambda/2 * ||E||^2`` over **every row** of every table, added to the mean loss
  at every step (``embedding_l2_rows="all"``; FuxiCTR's float ``embedding_regularizer``), and
  Adam on every row (``embedding_update="dense"``): with the full-table L2 every row has a
  gradient at every step, so this is what BARS does (the default ``"sparse"``/``"batch"`` is a
  different regulariser under Adam).

``lambda`` (BARS' ``embedding_regularizer``) differs per dataset and model: pass it,
``preset("bars", embedding_l2=0.05)``. :data:`BARS_KEYS` is the table of every config key; the
leaderboard chapter (``book/11_leaderboard.ipynb``) shows it.
"""
from __future__ import annotations

import re

from ctrlib import checks as C
from ctrlib.train import TrainConfig, config_with

PRESETS = {
    "bars": dict(lr=1e-3, batch_size=4096, epochs=100, patience=2, monitor="auc", lr_decay=0.1, grad_clip=10.0,
                 embedding_l2_rows="all", embedding_update="dense"),
    "default": {},
}

# FuxiCTR/BARS config key -> (where it goes in ctrlib, the ctrlib name, a note).
BARS_KEYS = {
    "learning_rate": ("train", "lr", ""),
    "batch_size": ("train", "batch_size", ""),
    "epochs": ("train", "epochs", ""),
    "early_stop_patience": ("train", "patience", "epochs without improvement before stopping"),
    "monitor": ("train", "monitor", "'AUC' -> 'auc'; a weighted dict such as {'AUC': 1, 'logloss': -1} has no "
                                    "equivalent: monitor one metric"),
    "monitor_mode": ("train", "-", "follows from the metric (max for auc/gauc, min for logloss)"),
    "embedding_regularizer": ("train", "embedding_l2", "lambda of lambda/2*||E||^2; with embedding_l2_rows='all' "
                                                       "(preset 'bars') over every row, as FuxiCTR"),
    "net_regularizer": ("train", "weight_decay", "Adam's L2 on non-embedding weights: the gradient of "
                                                 "lambda/2*||W||^2 (FuxiCTR also skips biases)"),
    "seed": ("train", "seed", ""),
    "gpu": ("train", "device", "-1 -> 'cpu', k -> 'cuda:k'"),
    "optimizer": ("train", "-", "always Adam"),
    "loss": ("train", "-", "always binary cross-entropy (plus a model's aux_loss)"),
    "embedding_dim": ("model", "embedding_dim", "the model's second argument"),
    "hidden_units": ("model", "hidden", "a tuple of widths"),
    "dnn_hidden_units": ("model", "hidden", ""),
    "hidden_activations": ("model", "-", "ReLU in every ctrlib MLP"),
    "net_dropout": ("model", "dropout", ""),
    "batch_norm": ("model", "batch_norm", "where the model has it"),
    "num_cross_layers": ("model", "cross_layers", "DCN / DCN-V2"),
    "min_categr_count": ("data", "min_count", "ctrlib.data.from_frames / load_bars"),
}


def _l2_strength(key: str, value: str) -> float:
    """FuxiCTR's regulariser strings: ``"l2(1.e-2)"`` -> 0.01 (the same lambda/2 form as a float)."""
    m = re.fullmatch(r"\s*l2\(\s*([0-9.eE+-]+)\s*\)\s*", value)
    if not m:
        raise ValueError(f"{key} {value!r}: ctrlib has the L2 penalty only; write a number or 'l2(<lambda>)'")
    return float(m.group(1))


def preset(name: str, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of a named preset (``"bars"``, ``"default"``), with ``overrides``."""
    C.choice("preset", name.lower() if isinstance(name, str) else name, list(PRESETS))
    return config_with(TrainConfig(**PRESETS[name.lower()]), **overrides)


def from_bars_config(config: dict) -> dict:
    """Split a FuxiCTR/BARS model config (a dict as in its YAML) into ctrlib's arguments:
    ``{"train": TrainConfig (preset 'bars' + the config's training keys), "model": {...}, "data": {...},
    "ignored": [keys with no ctrlib equivalent or unknown]}``."""
    train, model, data, ignored = {}, {}, {}, []
    for key, value in config.items():
        where, name, _ = BARS_KEYS.get(key, (None, "-", ""))
        if name == "-":
            ignored.append(key)
            continue
        if key == "monitor":
            if not isinstance(value, str):
                raise ValueError(f"BARS monitor {value!r}: ctrlib monitors one metric ('auc', 'gauc' or 'logloss')")
            value = value.lower()
        if key == "gpu":
            value = "cpu" if value is None or int(value) < 0 else f"cuda:{int(value)}"
        if key in ("hidden_units", "dnn_hidden_units"):
            value = tuple(value)
        if key in ("embedding_regularizer", "net_regularizer") and isinstance(value, str):
            value = _l2_strength(key, value)
        {"train": train, "model": model, "data": data}[where][name] = value
    return {"train": preset("bars", **train), "model": model, "data": data, "ignored": ignored}


__all__ = ["PRESETS", "BARS_KEYS", "preset", "from_bars_config"]

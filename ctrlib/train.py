"""fit / evaluate / predict: the one training loop every chapter uses.

A model maps a dict batch to logits: a tensor ``[B]`` for the schema's label, or a dict
``{label_name: [B] logits, ..., "aux_loss": scalar}`` for several tasks and extra losses (the one
hook for auxiliary losses). The loss is the mean binary cross-entropy per task, plus ``aux_loss``,
plus the embedding L2 penalty ``lambda/2 * ||E_r||^2`` summed over the rows the batch touches
(``embedding_l2_rows="batch"``) or over every row (``"all"``: FuxiCTR's and BARS' form).

Devices: ``fit(..., device="cuda")`` (or ``"cpu"``, ``"mps"``, ``"auto"``: the best one present) trains
there; ``None`` (the default) trains where the model's parameters are. Batches are sliced on the CPU
and moved to the device once per batch; ``predict``/``evaluate`` score on the model's device.

Seeds, the one rule: ``fit``'s ``seed`` (``TrainConfig.seed``) seeds shuffling and dropout when it is
given; when it is ``None`` (the default) fit uses ``torch.initial_seed()``, the seed that
:func:`seed_everything` (or ``torch.manual_seed``) last set. So ``seed_everything(N)`` alone changes
every random draw of a fit, and an explicit ``seed=`` wins over it.

Embedding tables are updated row-wise by default (``embedding_update="sparse"``): lazy Adam on the rows
a batch touches (:class:`ctrlib.optim.LazyAdam`), so a step costs the same for a table of 10^4 or
10^7 rows; ``"dense"`` is Adam on every row of every table. Other parameters always get Adam.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ctrlib import checks as C
from ctrlib import metrics as M
from ctrlib.data.tensors import TensorData
from ctrlib.layers import EmbeddingTable, FeatureEmbedding, eval_mode, sparse_row_gradients
from ctrlib.optim import LazyAdam, clip_grad_norm, prepare_table_grads


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: same seed, same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0       # on non-embedding parameters (Adam's L2)
    embedding_l2: float = 0.0       # lambda in lambda/2 * ||E_r||^2 summed over embedding rows r (which: next line)
    embedding_l2_rows: str = "batch"  # "batch": the rows the batch touches; "all": every row of every table (BARS)
    embedding_update: str = "sparse"  # "sparse": lazy Adam on the rows a batch touches; "dense": Adam on every row
    patience: int = 2               # epochs without improvement before stopping
    monitor: str = "auc"            # validation metric for early stopping: auc, gauc or logloss
    lr_decay: float | None = None   # multiply the lr by this after a non-improving epoch (FuxiCTR: 0.1)
    grad_clip: float | None = None  # clip the gradient norm (FuxiCTR: 10)
    eval_batch_size: int = 16_384
    group: str = "user_id"          # the column GAUC groups by
    seed: int | None = None         # shuffling and dropout; None: torch.initial_seed() (what seed_everything set)
    progress: bool | str | None = None  # True: a bar; "log": one line per epoch; False: silent;
    #                                     None: a bar when interactive, else "log" (silent under CTRLIB_HEADLESS=1)
    autocast: str | None = None     # "bf16": bfloat16 autocast of the forward pass (CPU or CUDA); fp32 weights and loss
    min_delta: float = 0.0          # an epoch improves only if the monitored metric moves by more than this
    device: str | None = None       # "cpu", "cuda", "cuda:1", "mps", "auto" (best present); None: the model's device
    loss_mask: str | None = None    # a bool column: only its True positions count in the loss (sequence models)
    task_weights: dict | None = None  # several tasks: label -> w_t in  L = sum_t w_t BCE_t  (unlisted: 1)
    task_masks: dict | None = None    # label -> a bool column: that task's loss counts only its True rows
    monitor_label: str | None = None  # the label validation scores for early stopping (None: the first)
    eval_every: float | None = None  # validate every this fraction of an epoch (0.25: 4 per epoch); None: per epoch
    freeze: tuple[str, ...] = ()    # left as they are: "embeddings", "dense" (all else), "table:<name>", name prefixes
    embedding_lr: float | None = None  # the lr of the embedding tables (None: lr), e.g. lower for transferred tables
    optimizer: str = "adam"         # "adam" (lazy Adam on sparse table rows) or "sgd" (plain SGD, rows too)
    table_lr: dict | None = None    # {table: lr} for rows of named tables (lazy Adam), e.g. {"item_id": 1e-4}
    on_eval: Callable | None = field(default=None, repr=False)  # (model, epoch) -> dict added to each history row


@dataclass
class FitResult:
    history: pd.DataFrame           # one row per epoch (per evaluation with eval_every: a fractional epoch)
    best_epoch: int | float          # fractional with eval_every
    best_score: float
    train_seconds: float            # time in the training loop, validation excluded
    config: TrainConfig = field(repr=False, default=None)
    stop_reason: str = "epoch cap"  # "early stopping", "epoch cap" (ran all epochs) or "no validation"


# Names users copy from FuxiCTR/BARS configs -> ctrlib's (docs: book/11_leaderboard, ctrlib.presets).
BARS_NAMES = {"learning_rate": "lr", "embedding_regularizer": "embedding_l2", "net_regularizer": "weight_decay",
              "early_stop_patience": "patience", "batch_norm": "a model option (DeepFM(..., batch_norm=True))",
              "embedding_dim": "a model argument (DeepFM(schema, embedding_dim, hidden))",
              "hidden_units": "the model's hidden=(...)", "net_dropout": "the model's dropout=",
              "gpu": "device", "monitor_mode": "monitor (its mode follows from the metric)",
              "min_categr_count": "ctrlib.data.from_frames(..., min_count=)", "verbose": "progress"}


def config_with(config: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``config`` (default ``TrainConfig()``) with ``overrides``; an unknown name is a ``TypeError`` that
    lists the valid names, suggests the closest, and translates FuxiCTR/BARS names (``learning_rate``)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        k = unknown[0]
        if k in BARS_NAMES:
            hint = f"; in ctrlib, FuxiCTR/BARS' {k!r} is {BARS_NAMES[k]}"
        else:
            near = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
        raise TypeError(f"unknown training option {k!r}{hint}. Valid options: {', '.join(names)}")
    return dataclasses.replace(config or TrainConfig(), **overrides)


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """The device to run on: ``"auto"`` is CUDA, else MPS, else the CPU; ``None`` is where ``model``'s
    parameters are (the CPU for a model without any). A device that is not present is a clear error."""
    if device is None:
        p = next(model.parameters(), None) if model is not None else None
        return p.device if p is not None else torch.device("cpu")
    if isinstance(device, str) and device.lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device.lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                           "use device='cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {device!r}: MPS (Apple GPU) is not available here; use 'cpu' or 'auto'")
    return dev


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """One batch moved to ``device``: one copy per tensor (nothing when it is the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(setting: str | None, device: torch.device):
    """bfloat16 autocast of the forward pass on ``device`` (CPU or CUDA), or a no-op context."""
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=setting == "bf16" and device.type in ("cpu", "cuda"))


def _label_names(model: nn.Module) -> tuple[str, ...]:
    schema = getattr(model, "schema", None)
    return tuple(schema.labels) if schema is not None else ("label",)


def _as_logits(output, labels: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Normalise a model's output to ({label: logits}, aux_loss or None)."""
    if isinstance(output, torch.Tensor):
        if not labels:
            raise TypeError("a self-supervised model (self_supervised = True) returns {'aux_loss': loss}, not logits")
        return {labels[0]: output}, None
    logits = {k: v for k, v in output.items() if k in labels}
    if not logits and labels:
        raise KeyError(f"the model returned keys {list(output)}, none of which is a label {list(labels)}")
    return logits, output.get("aux_loss")


def _embedding_tables(model: nn.Module) -> list[torch.Tensor]:
    """Every embedding table of ``model``: the weights of its FeatureEmbedding and EmbeddingTable layers."""
    return [m.weight for m in model.modules() if isinstance(m, (FeatureEmbedding, EmbeddingTable))]


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _interactive() -> bool:
    return "ipykernel" in sys.modules or sys.stderr.isatty()


def _show_progress(setting: bool | str | None) -> bool:
    """A progress bar: ``True``, or ``None`` in an interactive session (not under CTRLIB_HEADLESS=1)."""
    if setting is not None:
        return setting is True
    return os.environ.get("CTRLIB_HEADLESS") != "1" and _interactive()


def _log_epochs(setting: bool | str | None) -> bool:
    """One line per epoch on stderr: ``"log"``, or ``None`` outside an interactive session (a script, a
    job's log file), except under CTRLIB_HEADLESS=1 (the book's executed pages)."""
    if setting is not None:
        return setting == "log"
    return os.environ.get("CTRLIB_HEADLESS") != "1" and not _interactive()


def _epoch_line(row: dict, epochs: int, monitor: str, improved: bool) -> str:
    scores = "  ".join(f"{k[6:]} {v:.5f}" for k, v in row.items() if k.startswith("valid_"))
    mark = f"  (best {monitor})" if improved else ""
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.5f}  {scores}  lr {row['lr']:.3g}  "
            f"{row['seconds']:.1f}s{mark}")


def _check_config(cfg: TrainConfig, any_monitor: bool = False) -> None:
    C.integer("epochs", cfg.epochs, 1)
    C.integer("batch_size", cfg.batch_size, 1)
    C.integer("eval_batch_size", cfg.eval_batch_size, 1)
    C.integer("patience", cfg.patience, 1, hint="it counts epochs without improvement before stopping")
    C.real("lr", cfg.lr, 0, low_open=True)
    C.real("weight_decay", cfg.weight_decay, 0)
    C.real("embedding_l2", cfg.embedding_l2, 0)
    if cfg.lr_decay is not None:
        C.real("lr_decay", cfg.lr_decay, 0, 1, low_open=True, hint="the lr is multiplied by it; None: no decay")
    if cfg.grad_clip is not None:
        C.real("grad_clip", cfg.grad_clip, 0, low_open=True, hint="None: no clipping")
    if not any_monitor:  # a validation function may return other metrics (e.g. recall@k): monitor any of them
        C.choice("monitor", cfg.monitor, ("auc", "gauc", "logloss"))
    C.real("min_delta", cfg.min_delta, 0, hint="the smallest change of the monitored metric that counts as better")
    if cfg.seed is not None:
        C.integer("seed", cfg.seed, 0)
    C.choice("progress", cfg.progress, (None, True, False, "log"))
    C.choice("autocast", cfg.autocast, (None, "bf16"))
    C.choice("embedding_update", cfg.embedding_update, ("sparse", "dense"))
    C.choice("embedding_l2_rows", cfg.embedding_l2_rows, ("batch", "all"))
    C.choice("optimizer", cfg.optimizer, ("adam", "sgd"))
    if cfg.eval_every is not None:
        C.real("eval_every", cfg.eval_every, 0, 1, low_open=True,
               hint="a fraction of an epoch, e.g. 0.25 validates 4 times per epoch; None: once per epoch")
    if cfg.embedding_lr is not None:
        C.real("embedding_lr", cfg.embedding_lr, 0, low_open=True, hint="None: the tables use lr")
    if cfg.table_lr is not None:
        if cfg.embedding_update != "sparse" or cfg.optimizer != "adam":
            raise ValueError("table_lr sets the lr of single rows, which only lazy Adam's row-wise steps do: "
                             "use embedding_update='sparse' and optimizer='adam' (or embedding_lr for every table)")
        if cfg.embedding_l2 and cfg.embedding_l2_rows == "all":
            raise ValueError("table_lr needs row-wise steps, but embedding_l2_rows='all' gives every row a gradient; "
                             "use embedding_l2_rows='batch'")
        for name, value in dict(cfg.table_lr).items():
            C.real(f"table_lr[{name!r}]", value, 0, low_open=True)
    if isinstance(cfg.freeze, str):
        raise TypeError(f"freeze takes a tuple of names, got the string {cfg.freeze!r}; write ({cfg.freeze!r},)")
    if cfg.on_eval is not None and not callable(cfg.on_eval):
        raise TypeError(f"on_eval must be a function (model, epoch) -> dict or None, got {type(cfg.on_eval).__name__}")
    for name in ("task_weights", "task_masks"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), dict):
            raise TypeError(f"{name} must be a dict label -> value, got {type(getattr(cfg, name)).__name__}")
    for label, w in (cfg.task_weights or {}).items():
        C.real(f"task_weights[{label!r}]", w, 0)


def _check_tasks(cfg: TrainConfig, labels: tuple[str, ...], train) -> None:
    """Task weights, masks and the monitored label name the model's labels; mask columns exist."""
    named = [*(cfg.task_weights or {}), *(cfg.task_masks or {}), *([cfg.monitor_label] if cfg.monitor_label else [])]
    unknown = sorted({k for k in named if k not in labels})
    if unknown:
        raise KeyError(f"task_weights / task_masks / monitor_label name {unknown}, which are not labels of the "
                       f"model {list(labels)}")
    missing = [c for c in (cfg.task_masks or {}).values() if c not in train.tensors]
    if missing:
        raise KeyError(f"the train data lacks the task_masks columns {missing}; it has {list(train.tensors)}")


def task_loss(logits: dict, batch: dict, weights: dict | None = None, masks: dict | None = None) -> torch.Tensor:
    """The multi-task loss  L = sum_t w_t BCE_t,  BCE_t the mean binary cross-entropy of task t over
    the rows of its mask (all rows without one): a task's unlabelled rows add nothing."""
    total = 0.0
    for k, z in logits.items():
        w = 1.0 if weights is None else weights.get(k, 1.0)
        if masks and k in masks:
            m = batch[masks[k]].float()
            bce = F.binary_cross_entropy_with_logits(z.float(), batch[k], reduction="none")
            total = total + w * (bce * m).sum() / m.sum().clamp(min=1)
        else:
            total = total + w * F.binary_cross_entropy_with_logits(z.float(), batch[k])
    return total


def _check_data(role: str, data, columns, mask: str | None = None) -> None:
    """``data`` is a non-empty TensorData holding ``columns``; the first (the label) is in [0, 1]
    wherever the loss reads it (the ``mask`` column's True positions)."""
    _check_data_rows(f"fit ({role} data)", data)
    if not columns:  # a self-supervised model reads no label
        return
    missing = [k for k in (*columns, *([mask] if mask else [])) if k not in data.tensors]
    if missing:
        raise KeyError(f"the {role} data lacks columns {missing} (labels / loss_mask / group); "
                       f"it has {list(data.tensors)}")
    y = data[columns[0]][data[mask]] if mask else data[columns[0]]
    if not bool(torch.isfinite(y).all() & (y >= 0).all() & (y <= 1).all()):
        bad = y[~(torch.isfinite(y) & (y >= 0) & (y <= 1))]
        raise ValueError(f"the {role} label {columns[0]!r} must be 0/1 clicks (or probabilities in [0, 1]); "
                         f"{len(bad)} values are not, e.g. {C.examples(bad[:100].numpy())}. Binarise it first, "
                         f"e.g. (rating >= 4).astype(int)")


def _check_valid(valid: TensorData, label: str, cfg: TrainConfig) -> None:
    """A validation set that can rank: 0/1 labels with both classes (per group for GAUC)."""
    _check_data("validation", valid, (label, *([cfg.group] if cfg.monitor == "gauc" else [])))
    y = valid[label]
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"the validation label {label!r} must hold 0/1 clicks for AUC, got e.g. "
                         f"{C.examples(y[(y != 0) & (y != 1)][:100].numpy())}")
    if len(y.unique()) < 2:
        raise ValueError(f"the validation set holds only label {y[0].item():g} ({len(y)} rows): it cannot rank, so "
                         f"AUC is undefined and no best epoch could be chosen. Use a validation split with "
                         f"clicks and non-clicks (e.g. split by time), or valid=None")
    if cfg.monitor == "gauc":
        both = pd.DataFrame({"g": valid[cfg.group].numpy(), "y": y.numpy()}).groupby("g")["y"].nunique() > 1
        if not both.any():
            raise ValueError(f"monitor='gauc': no {cfg.group!r} group of the validation set has both a click and a "
                             f"non-click ({len(both)} groups), so GAUC is undefined; monitor 'auc' instead")


def _check_data_rows(role: str, data) -> None:
    if not isinstance(data, TensorData):
        raise TypeError(f"{role} needs a TensorData (TensorData.from_frame(df, model.schema)), "
                        f"got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{role}: the data has no rows; check the split or filter that produced it")


class _BestWeights:
    """A copy of the best epoch's weights, restored at the end of fit or when it is interrupted."""

    def __init__(self, model: nn.Module):
        self.model, self.state, self.epoch = model, None, 0

    def keep(self, epoch: int) -> None:
        self.state, self.epoch = copy.deepcopy(self.model.state_dict()), epoch

    def restore(self) -> bool:
        if self.state is not None:
            self.model.load_state_dict(self.state)
        return self.state is not None


def fit(model: nn.Module, train: TensorData, valid: TensorData | None = None,
        config: TrainConfig | None = None, **overrides) -> FitResult:
    """Train with Adam, early stopping on the validation metric, and the best epoch's weights restored.

    ``fit(model, train, valid, epochs=5)`` is shorthand for ``config=TrainConfig(epochs=5)``.
    ``valid`` is a TensorData scored by :func:`evaluate`, or a function ``model -> {metric: value}``
    for models scored another way (the generative rankers score held-out events of a sequence).

    Impossible arguments and data (no rows, labels outside [0, 1], a validation set of one class)
    fail before training; a non-finite loss stops it (``FloatingPointError``, naming the epoch and
    batch). On that or on Ctrl-C the best epoch's weights are restored before the error propagates.
    Training draws from torch's global RNG seeded with ``seed`` inside a fork: the caller's RNG
    state is the same after ``fit`` as before. ``seed=None`` (the default) is ``torch.initial_seed()``,
    the seed :func:`seed_everything` last set (the module docstring states the rule).

    ``device`` (``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"``; default: where the model is) moves the
    model there for training and leaves it there. An unknown option is a ``TypeError`` listing the
    valid ones (FuxiCTR/BARS names are translated in the message); ``preset("bars")`` in
    :mod:`ctrlib.presets` is BARS' training.

    Stages and partial training (the one-epoch chapter): ``eval_every=0.25`` validates four times
    per epoch (history rows at epochs 0.25, 0.5, ...; ``train_loss`` is the mean over the steps
    since the previous row; early stopping keeps the best of these checkpoints and ``patience``
    still counts epochs, i.e. ``patience / eval_every`` validations); ``freeze=("embeddings",)`` or
    ``("dense",)`` (or parameter-name prefixes) leaves those parameters bit-identical;
    ``embedding_lr`` gives the tables their own lr; ``on_eval(model, epoch)`` runs after each
    validation (e.g. to score a test set along the curve) and a dict it returns joins the history
    row. A model with ``self_supervised = True`` returns ``{"aux_loss": loss}`` (its own objective,
    no label; see :class:`ctrlib.models.ContrastiveID`) and is validated by a function.
    """
    cfg = config_with(config, **overrides)
    if isinstance(cfg.monitor, str):
        cfg.monitor = cfg.monitor.lower()  # metric names are case-insensitive ("AUC" as in BARS configs)
    _check_config(cfg, any_monitor=callable(valid))
    device = resolve_device(cfg.device, model)
    if cfg.seed is None:  # the one seed rule (module docstring): what seed_everything / torch.manual_seed set
        cfg.seed = torch.initial_seed()
    if cfg.autocast == "bf16" and device.type == "cpu" and not _native_bf16():
        warnings.warn("this CPU has no native bfloat16 matrix units (AVX-512 BF16 / AMX): autocast='bf16' "
                      "will be emulated and is likely slower than float32; leave autocast=None", stacklevel=2)
    labels = () if getattr(model, "self_supervised", False) else _label_names(model)
    _check_data("train", train, labels, cfg.loss_mask)
    _check_tasks(cfg, labels, train)
    if valid is not None and not callable(valid):
        if not labels:
            raise TypeError("a self-supervised model is validated by a function model -> {metric: value}, "
                            "not by labelled data")
        _check_valid(valid, cfg.monitor_label or labels[0], cfg)
    frozen = _frozen_parameters(model, [f for f in cfg.freeze if not f.startswith("table:")])
    frozen_rows = _frozen_rows(model, [f[len("table:"):] for f in cfg.freeze if f.startswith("table:")])
    lr_rows = [(rows, lr) for name, lr in (cfg.table_lr or {}).items() for rows in _frozen_rows(model, [name])]
    model.to(device)
    best = _BestWeights(model)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):  # seeded inside, the caller's global RNG is left as it was
        trainable = {id(p): p.requires_grad for p in model.parameters()}
        try:
            for p in frozen:
                p.requires_grad_(False)
            return _train(model, train, valid, cfg, labels, best, device, frozen, frozen_rows, lr_rows)
        except (KeyboardInterrupt, FloatingPointError) as stop:
            if best.restore():
                warnings.warn(f"fit stopped ({type(stop).__name__}); the model holds the weights of epoch "
                              f"{best.epoch}, the best so far", stacklevel=2)
            raise
        finally:
            for p in model.parameters():
                p.requires_grad_(trainable[id(p)])


def _frozen_parameters(model: nn.Module, freeze) -> list[nn.Parameter]:
    """The parameters ``freeze`` names: ``"embeddings"`` (every embedding table), ``"dense"`` (every
    other parameter) or a parameter-name prefix (``"mlp."``); each name must match something."""
    tables = {id(t) for t in _embedding_tables(model)}
    out: dict[int, nn.Parameter] = {}
    for name in freeze:
        if name == "embeddings":
            hit = [p for p in model.parameters() if id(p) in tables]
        elif name == "dense":
            hit = [p for p in model.parameters() if id(p) not in tables]
        else:
            hit = [p for n, p in model.named_parameters() if n == name or n.startswith(name)]
        if not hit:
            names = [n for n, _ in model.named_parameters()]
            raise ValueError(f"freeze={tuple(freeze)!r}: {name!r} matches no parameter of {type(model).__name__} "
                             f"(use 'embeddings', 'dense' or a prefix of {C.examples(names)})")
        out.update({id(p): p for p in hit})
    if freeze and len(out) == len(list(model.parameters())):
        raise ValueError(f"freeze={tuple(freeze)!r} freezes every parameter: nothing would train")
    return list(out.values())


def _frozen_rows(model: nn.Module, tables) -> list[tuple[torch.Tensor, int, int]]:
    """``(weight, first row, end row)`` of each named table of the model's FeatureEmbeddings: rows
    that keep their values while the rest of the same parameter trains (``freeze=("table:item_id",)``)."""
    out = []
    for name in tables:
        hits = [m for m in model.modules() if isinstance(m, FeatureEmbedding) and name in m.table_offsets]
        if not hits:
            found = sorted({t for m in model.modules() if isinstance(m, FeatureEmbedding) for t in m.table_offsets})
            raise ValueError(f"'table:{name}' (freeze or table_lr) names no embedding table of {type(model).__name__} "
                             f"(its tables: {found})")
        for m in hits:
            start = m.table_offsets[name]
            out.append((m.weight, start, start + m.schema.tables[name]))
    return out


def _drop_frozen_rows(frozen_rows) -> None:
    """Remove the frozen rows from their tables' gradients (after ``prepare_table_grads``): a sparse
    gradient loses those rows (lazy Adam and SGD then never touch them), a dense one gets zeros there
    (a fresh Adam's moments stay zero on them, so its step is exactly zero)."""
    for weight, start, stop in frozen_rows:
        g = weight.grad
        if g is None:
            continue
        if g.is_sparse:
            rows = g._indices()[0]
            keep = (rows < start) | (rows >= stop)
            weight.grad = torch.sparse_coo_tensor(rows[keep].unsqueeze(0), g._values()[keep], g.shape,
                                                  is_coalesced=True, check_invariants=False)
        else:
            g[start:stop] = 0


def _checkpoints(n_batches: int, eval_every: float | None) -> list[int]:
    """The steps of an epoch after which fit validates: the last one, and every ``eval_every`` epoch."""
    if eval_every is None:
        return [n_batches]
    fractions = [j * eval_every for j in range(1, math.ceil(1 / eval_every - 1e-9))] + [1.0]
    return sorted({max(1, min(n_batches, round(n_batches * f))) for f in fractions})


def _train(model: nn.Module, train: TensorData, valid, cfg: TrainConfig, labels: tuple[str, ...],
           best: _BestWeights, device: torch.device | None = None, frozen=(), frozen_rows=(),
           lr_rows=()) -> FitResult:
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)  # tiny embeddings decayed by L2 turn subnormal and slow the CPU
    frozen_ids = {id(p) for p in frozen}
    tables = [t for t in _embedding_tables(model) if id(t) not in frozen_ids]
    table_ids = {id(t) for t in _embedding_tables(model)}
    others = [p for p in model.parameters() if id(p) not in table_ids and id(p) not in frozen_ids]
    groups = [{"params": tables, "weight_decay": 0.0, "lr": cfg.embedding_lr or cfg.lr},
              {"params": others, "weight_decay": cfg.weight_decay}]
    groups = [g for g in groups if g["params"]]  # a frozen part is not given to the optimiser at all
    sparse = cfg.embedding_update == "sparse"
    if cfg.optimizer == "sgd":  # plain SGD: a sparse row gradient moves only its rows
        optimizer = torch.optim.SGD(groups, lr=cfg.lr)
    else:
        optimizer = LazyAdam(groups, lr=cfg.lr) if sparse else torch.optim.Adam(groups, lr=cfg.lr)
    for (weight, start, stop), lr in lr_rows:  # rows of one table at their own lr (relative to their group's)
        optimizer.scale_row_lr(weight, start, stop, lr / (cfg.embedding_lr or cfg.lr))
    batch_l2 = cfg.embedding_l2 if cfg.embedding_l2_rows == "batch" else 0.0
    full_l2 = cfg.embedding_l2 if cfg.embedding_l2_rows == "all" else 0.0
    # the tables' lookups give sparse row gradients where the update or the batch-rows L2 needs them; with
    # the full-table L2 every row has a gradient at every step, and lazy Adam is Adam
    row_tables = tables if (sparse or batch_l2) and not full_l2 else []
    sign = -1.0 if cfg.monitor == "logloss" else 1.0
    best_score, best_epoch, bad_epochs = -np.inf, 0, 0
    patience = cfg.patience if cfg.eval_every is None else math.ceil(cfg.patience / cfg.eval_every - 1e-9)
    rows, train_seconds = [], 0.0
    stop_reason = "epoch cap" if valid is not None else "no validation"
    log = _log_epochs(cfg.progress)
    sync = getattr(train, "sync_gradients", None)  # ctrlib.distributed.ShardedData: average across processes

    from tqdm.auto import tqdm
    bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not _show_progress(cfg.progress), leave=False)
    n_batches = train.num_batches(cfg.batch_size)
    checkpoints = _checkpoints(n_batches, cfg.eval_every)
    stop = False
    for epoch in bar:
        model.train()
        shuffle_seed = (cfg.seed * 1000 + epoch) % 2**63
        steps = enumerate(train.batches(cfg.batch_size, shuffle=True, seed=shuffle_seed), 1)
        for checkpoint in checkpoints:  # [n_batches] unless eval_every splits the epoch
            start, total, n = time.perf_counter(), 0.0, 0
            for step, batch in steps:
                batch = _to_device(batch, device)
                with _autocast(cfg.autocast, device), sparse_row_gradients(row_tables):
                    logits, aux = _as_logits(model(batch), labels)
                if cfg.loss_mask:  # e.g. [B, N] logits of which only the training events count
                    m = batch[cfg.loss_mask]
                    logits = {k: z[m] for k, z in logits.items()}
                    batch = {**batch, **{k: batch[k][m] for k in logits}}
                loss = task_loss(logits, batch, cfg.task_weights, cfg.task_masks)
                if aux is not None:
                    loss = loss + aux
                if full_l2:
                    loss = loss + full_l2 / 2 * sum(t.pow(2).sum() for t in tables)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the training loss is {value} at epoch {epoch}, batch {step} of "
                        f"{n_batches}: training diverged. Lower lr (now {cfg.lr:g}), set "
                        f"grad_clip, or look for huge values among the numeric features")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if sync is not None:
                    sync(model)
                penalty = prepare_table_grads(row_tables, batch_l2, dense=not sparse)  # + the batch-rows L2's gradient
                _drop_frozen_rows(frozen_rows)
                if cfg.grad_clip:
                    clip_grad_norm([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                optimizer.step()
                rows_in_batch = len(batch[labels[0]]) if labels else len(next(iter(batch.values())))
                total += (value + penalty) * rows_in_batch
                n += rows_in_batch
                if step == checkpoint:
                    break
            seconds = time.perf_counter() - start
            train_seconds += seconds
            at = epoch if checkpoint == n_batches else epoch - 1 + checkpoint / n_batches  # a fractional epoch
            row = {"epoch": at, "train_loss": total / max(n, 1), "lr": optimizer.param_groups[-1]["lr"],
                   "seconds": seconds}
            if valid is not None:
                wanted = ("auc", "logloss", "gauc") if cfg.monitor == "gauc" else ("auc", "logloss")
                scores = (valid(model) if callable(valid)
                          else evaluate(model, valid, wanted, cfg.group, cfg.eval_batch_size, device=device,
                                        label=cfg.monitor_label))
                if cfg.monitor not in scores:
                    raise KeyError(f"validation returned {list(scores)}, not the monitored {cfg.monitor!r}")
                row.update({f"valid_{k}": v for k, v in scores.items()})
                score = sign * scores[cfg.monitor]
                if math.isnan(score):
                    raise ValueError(f"the validation {cfg.monitor} is NaN at epoch {at:g}: the validation set "
                                     f"cannot rank (one class only?); early stopping needs clicks and non-clicks")
                improved = score > best_score + cfg.min_delta
                if improved:
                    best_score, best_epoch, bad_epochs = score, at, 0
                    best.keep(at)
                else:
                    bad_epochs += 1
                    if cfg.lr_decay:
                        for g in optimizer.param_groups:
                            g["lr"] *= cfg.lr_decay
                bar.set_postfix({cfg.monitor: f"{scores[cfg.monitor]:.4f}"})
            if log:
                improved = valid is not None and improved
                print(_epoch_line(row, cfg.epochs, cfg.monitor, improved), file=sys.stderr, flush=True)
            if cfg.on_eval is not None:
                row.update(cfg.on_eval(model, at) or {})
                model.train()
            rows.append(row)
            if valid is not None and bad_epochs >= patience:
                stop_reason, stop = "early stopping", True
                break
        if stop:
            break
    if not best.restore():
        best_epoch = rows[-1]["epoch"]
    return FitResult(pd.DataFrame(rows), best_epoch, sign * best_score if valid is not None else float("nan"),
                     train_seconds, cfg, stop_reason)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 16_384,
            device: str | torch.device | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Click probabilities: an array for one task, a dict of arrays for several. ``device``: where to
    score (the model is moved there); ``None``: where the model is."""
    _check_data_rows("predict", data)
    C.integer("batch_size", batch_size, 1)
    labels = _label_names(model)
    device = resolve_device(device, model)
    model.to(device)
    chunks: dict[str, list] = {}
    with eval_mode(model):
        for batch in data.batches(batch_size):
            logits, _ = _as_logits(model(_to_device(batch, device)), labels)
            for k, z in logits.items():
                chunks.setdefault(k, []).append(torch.sigmoid(z.float()).cpu().numpy())
    out = {k: np.concatenate(v) for k, v in chunks.items()}
    for k, p in out.items():
        if not np.isfinite(p).all():
            raise FloatingPointError(f"the model predicts NaN for {int((~np.isfinite(p)).sum())} of {len(p)} rows "
                                     f"({k!r}): its weights or inputs are not finite (a diverged fit?)")
    return out[labels[0]] if len(out) == 1 else out


def evaluate(model: nn.Module, data: TensorData, metrics=("auc", "logloss"), group: str = "user_id",
             batch_size: int = 16_384, device: str | torch.device | None = None,
             label: str | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` for ``label`` (None: the first; see :func:`ctrlib.metrics.compute`).
    Metric names are case-insensitive (``"AUC"``); the keys returned are lower case. ``gauc`` groups
    the rows by the column ``group`` (default ``user_id``), which ``data`` must carry."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    metrics = tuple(m.lower() if isinstance(m, str) else m for m in metrics)
    for m in metrics:
        C.choice("metric", m, M.METRICS)
    labels = _label_names(model)
    if label is not None:
        if label not in labels:
            raise KeyError(f"evaluate: {label!r} is not a label of the model {list(labels)}")
        labels = (label, *[k for k in labels if k != label])
    _check_data_rows("evaluate", data)
    if labels[0] not in data.tensors:
        raise KeyError(f"evaluate: the data lacks the label {labels[0]!r}; it has {list(data.tensors)}")
    if "gauc" in metrics and group not in data.tensors:
        raise KeyError(f"evaluate: gauc groups by {group!r}, which the data lacks (it has {list(data.tensors)}). "
                       f"Carry the column with Schema(extras=({group!r},)) or TensorData.from_frame(df, schema, "
                       f"extras=({group!r},)), or pass group=<a column it has>")
    p = predict(model, data, batch_size, device)
    p = p[labels[0]] if isinstance(p, dict) else p
    groups = data[group].numpy() if "gauc" in metrics else None
    return M.compute(data[labels[0]].numpy(), p, groups, metrics)


@torch.no_grad()
def transfer_embeddings(source: nn.Module, target: nn.Module, tables=None) -> list[str]:
    """Copy embedding tables from ``source`` into ``target`` by table name, row for row (row = id), so
    an id keeps its vector: both models must be built from the same vocabulary of each table (checked:
    the same number of rows and the same width). ``tables``: the names to copy (default: every table
    the two models share). Returns the names copied. Stage 2 of two-stage training."""
    def feature_tables(model):
        found = {}
        for m in model.modules():
            if isinstance(m, FeatureEmbedding):
                for name in m.table_offsets:
                    found.setdefault(name, m)
        return found

    src, dst = feature_tables(source), feature_tables(target)
    names = [t for t in src if t in dst] if tables is None else list(tables)
    if not names:
        raise ValueError(f"transfer_embeddings: no table in common (source {list(src)}, target {list(dst)})")
    for name in names:
        if name not in src or name not in dst:
            raise KeyError(f"transfer_embeddings: table {name!r} is missing from the "
                           f"{'source' if name not in src else 'target'} (source {list(src)}, target {list(dst)})")
        a, b = src[name].table_weight(name), dst[name].table_weight(name)
        if a.shape != b.shape:
            raise ValueError(f"transfer_embeddings: table {name!r} is {tuple(a.shape)} in the source and "
                             f"{tuple(b.shape)} in the target; build both from the same vocabulary and width, "
                             f"or the rows (ids) would not line up")
        b.copy_(a)
    return names

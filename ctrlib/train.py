"""fit / evaluate / predict: the one training loop every chapter uses.

A model maps a dict batch to logits: a tensor ``[B]`` for the schema's label, or a dict
``{label_name: [B] logits, ..., "aux_loss": scalar}`` for several tasks and extra losses (the one
hook for auxiliary losses). The loss is the mean binary cross-entropy per task, plus ``aux_loss``,
plus the embedding L2 penalty ``lambda/2 * ||E_r||^2`` summed over the rows the batch touches
(``embedding_l2_rows="batch"``) or over every row (``"all"``: FuxiCTR's and BARS' form).

Embedding tables are updated row-wise by default (``embedding_update="sparse"``): lazy Adam on the rows
a batch touches (:class:`ctrlib.optim.LazyAdam`), so a step costs the same for a table of 10^4 or
10^7 rows; ``"dense"`` is Adam on every row of every table. Other parameters always get Adam.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import sys
import time
import warnings
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
    seed: int = 0
    progress: bool | None = None    # None: a bar only in an interactive session
    autocast: str | None = None     # "bf16": bfloat16 autocast of the forward pass on CPU; fp32 weights and loss
    loss_mask: str | None = None    # a bool column: only its True positions count in the loss (sequence models)


@dataclass
class FitResult:
    history: pd.DataFrame           # one row per epoch
    best_epoch: int
    best_score: float
    train_seconds: float            # time in the training loop, validation excluded
    config: TrainConfig = field(repr=False, default=None)
    stop_reason: str = "epoch cap"  # "early stopping", "epoch cap" (ran all epochs) or "no validation"


def _label_names(model: nn.Module) -> tuple[str, ...]:
    schema = getattr(model, "schema", None)
    return tuple(schema.labels) if schema is not None else ("label",)


def _as_logits(output, labels: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Normalise a model's output to ({label: logits}, aux_loss or None)."""
    if isinstance(output, torch.Tensor):
        return {labels[0]: output}, None
    logits = {k: v for k, v in output.items() if k in labels}
    if not logits:
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


def _show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    if os.environ.get("CTRLIB_HEADLESS") == "1":
        return False
    return "ipykernel" in sys.modules or sys.stderr.isatty()


def _check_config(cfg: TrainConfig) -> None:
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
    C.choice("monitor", cfg.monitor, ("auc", "gauc", "logloss"))
    C.choice("autocast", cfg.autocast, (None, "bf16"))
    C.choice("embedding_update", cfg.embedding_update, ("sparse", "dense"))
    C.choice("embedding_l2_rows", cfg.embedding_l2_rows, ("batch", "all"))


def _check_data(role: str, data, columns, mask: str | None = None) -> None:
    """``data`` is a non-empty TensorData holding ``columns``; the first (the label) is in [0, 1]
    wherever the loss reads it (the ``mask`` column's True positions)."""
    _check_data_rows(f"fit ({role} data)", data)
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
    state is the same after ``fit`` as before.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    _check_config(cfg)
    if cfg.autocast == "bf16" and not _native_bf16():
        warnings.warn("this CPU has no native bfloat16 matrix units (AVX-512 BF16 / AMX): autocast='bf16' "
                      "will be emulated and is likely slower than float32; leave autocast=None", stacklevel=2)
    labels = _label_names(model)
    _check_data("train", train, labels, cfg.loss_mask)
    if valid is not None and not callable(valid):
        _check_valid(valid, labels[0], cfg)
    best = _BestWeights(model)
    with torch.random.fork_rng(devices=[]):  # seeded inside, the caller's global RNG is left as it was
        try:
            return _train(model, train, valid, cfg, labels, best)
        except (KeyboardInterrupt, FloatingPointError) as stop:
            if best.restore():
                warnings.warn(f"fit stopped ({type(stop).__name__}); the model holds the weights of epoch "
                              f"{best.epoch}, the best so far", stacklevel=2)
            raise


def _train(model: nn.Module, train: TensorData, valid, cfg: TrainConfig, labels: tuple[str, ...],
           best: _BestWeights) -> FitResult:
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)  # tiny embeddings decayed by L2 turn subnormal and slow the CPU
    tables = _embedding_tables(model)
    table_ids = {id(t) for t in tables}
    others = [p for p in model.parameters() if id(p) not in table_ids]
    groups = [{"params": tables, "weight_decay": 0.0}, {"params": others, "weight_decay": cfg.weight_decay}]
    sparse = cfg.embedding_update == "sparse"
    optimizer = LazyAdam(groups, lr=cfg.lr) if sparse else torch.optim.Adam(groups, lr=cfg.lr)
    batch_l2 = cfg.embedding_l2 if cfg.embedding_l2_rows == "batch" else 0.0
    full_l2 = cfg.embedding_l2 if cfg.embedding_l2_rows == "all" else 0.0
    # the tables' lookups give sparse row gradients where the update or the batch-rows L2 needs them; with
    # the full-table L2 every row has a gradient at every step, and lazy Adam is Adam
    row_tables = tables if (sparse or batch_l2) and not full_l2 else []
    sign = -1.0 if cfg.monitor == "logloss" else 1.0
    best_score, best_epoch, bad_epochs = -np.inf, 0, 0
    rows, train_seconds = [], 0.0
    stop_reason = "epoch cap" if valid is not None else "no validation"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
    sync = getattr(train, "sync_gradients", None)  # ctrlib.distributed.ShardedData: average across processes

    from tqdm.auto import tqdm
    bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not _show_progress(cfg.progress), leave=False)
    for epoch in bar:
        model.train()
        start, total, n = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch), 1):
            with autocast, sparse_row_gradients(row_tables):
                logits, aux = _as_logits(model(batch), labels)
            if cfg.loss_mask:  # e.g. [B, N] logits of which only the training events count
                m = batch[cfg.loss_mask]
                logits = {k: z[m] for k, z in logits.items()}
                batch = {**batch, **{k: batch[k][m] for k in logits}}
            loss = sum(F.binary_cross_entropy_with_logits(z.float(), batch[k]) for k, z in logits.items())
            if aux is not None:
                loss = loss + aux
            if full_l2:
                loss = loss + full_l2 / 2 * sum(t.pow(2).sum() for t in tables)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the training loss is {value} at epoch {epoch}, batch {step} of "
                    f"{train.num_batches(cfg.batch_size)}: training diverged. Lower lr (now {cfg.lr:g}), set "
                    f"grad_clip, or look for huge values among the numeric features")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync is not None:
                sync(model)
            penalty = prepare_table_grads(row_tables, batch_l2, dense=not sparse)  # + the batch-rows L2's gradient
            if cfg.grad_clip:
                clip_grad_norm(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total += (value + penalty) * len(batch[labels[0]])
            n += len(batch[labels[0]])
        seconds = time.perf_counter() - start
        train_seconds += seconds
        row = {"epoch": epoch, "train_loss": total / max(n, 1), "lr": optimizer.param_groups[0]["lr"],
               "seconds": seconds}
        if valid is not None:
            wanted = ("auc", "logloss", "gauc") if cfg.monitor == "gauc" else ("auc", "logloss")
            scores = valid(model) if callable(valid) else evaluate(model, valid, wanted, cfg.group, cfg.eval_batch_size)
            if cfg.monitor not in scores:
                raise KeyError(f"validation returned {list(scores)}, not the monitored {cfg.monitor!r}")
            row.update({f"valid_{k}": v for k, v in scores.items()})
            score = sign * scores[cfg.monitor]
            if math.isnan(score):
                raise ValueError(f"the validation {cfg.monitor} is NaN at epoch {epoch}: the validation set "
                                 f"cannot rank (one class only?); early stopping needs clicks and non-clicks")
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best.keep(epoch)
            else:
                bad_epochs += 1
                if cfg.lr_decay:
                    for g in optimizer.param_groups:
                        g["lr"] *= cfg.lr_decay
            bar.set_postfix({cfg.monitor: f"{scores[cfg.monitor]:.4f}"})
        rows.append(row)
        if valid is not None and bad_epochs >= cfg.patience:
            stop_reason = "early stopping"
            break
    if not best.restore():
        best_epoch = len(rows)
    return FitResult(pd.DataFrame(rows), best_epoch, sign * best_score if valid is not None else float("nan"),
                     train_seconds, cfg, stop_reason)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 16_384) -> np.ndarray | dict[str, np.ndarray]:
    """Click probabilities: an array for one task, a dict of arrays for several."""
    _check_data_rows("predict", data)
    C.integer("batch_size", batch_size, 1)
    labels = _label_names(model)
    chunks: dict[str, list] = {}
    with eval_mode(model):
        for batch in data.batches(batch_size):
            logits, _ = _as_logits(model(batch), labels)
            for k, z in logits.items():
                chunks.setdefault(k, []).append(torch.sigmoid(z.float()).numpy())
    out = {k: np.concatenate(v) for k, v in chunks.items()}
    for k, p in out.items():
        if not np.isfinite(p).all():
            raise FloatingPointError(f"the model predicts NaN for {int((~np.isfinite(p)).sum())} of {len(p)} rows "
                                     f"({k!r}): its weights or inputs are not finite (a diverged fit?)")
    return out[labels[0]] if len(out) == 1 else out


def evaluate(model: nn.Module, data: TensorData, metrics=("auc", "logloss"), group: str = "user_id",
             batch_size: int = 16_384) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` for the first label (see :func:`ctrlib.metrics.compute`)."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for m in metrics:
        C.choice("metric", m, M.METRICS)
    labels = _label_names(model)
    _check_data_rows("evaluate", data)
    if labels[0] not in data.tensors:
        raise KeyError(f"evaluate: the data lacks the label {labels[0]!r}; it has {list(data.tensors)}")
    if "gauc" in metrics and group not in data.tensors:
        raise KeyError(f"evaluate: gauc groups by {group!r}, which the data lacks (it has {list(data.tensors)}). "
                       f"Carry the column with Schema(extras=({group!r},)) or TensorData.from_frame(df, schema, "
                       f"extras=({group!r},)), or pass group=<a column it has>")
    p = predict(model, data, batch_size)
    p = p[labels[0]] if isinstance(p, dict) else p
    groups = data[group].numpy() if "gauc" in metrics else None
    return M.compute(data[labels[0]].numpy(), p, groups, metrics)

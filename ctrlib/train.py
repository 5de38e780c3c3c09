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


def fit(model: nn.Module, train: TensorData, valid: TensorData | None = None,
        config: TrainConfig | None = None, **overrides) -> FitResult:
    """Train with Adam, early stopping on the validation metric, and the best epoch's weights restored.

    ``fit(model, train, valid, epochs=5)`` is shorthand for ``config=TrainConfig(epochs=5)``.
    ``valid`` is a TensorData scored by :func:`evaluate`, or a function ``model -> {metric: value}``
    for models scored another way (the generative rankers score held-out events of a sequence).
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    if cfg.monitor not in ("auc", "gauc", "logloss"):
        raise ValueError(f"monitor must be auc, gauc or logloss, got {cfg.monitor!r}")
    if cfg.embedding_update not in ("sparse", "dense"):
        raise ValueError(f"embedding_update must be 'sparse' or 'dense', got {cfg.embedding_update!r}")
    if cfg.embedding_l2_rows not in ("batch", "all"):
        raise ValueError(f"embedding_l2_rows must be 'batch' or 'all', got {cfg.embedding_l2_rows!r}")
    if cfg.autocast not in (None, "bf16"):
        raise ValueError(f"autocast must be None or 'bf16', got {cfg.autocast!r}")
    if cfg.autocast == "bf16" and not _native_bf16():
        warnings.warn("this CPU has no native bfloat16 matrix units (AVX-512 BF16 / AMX): autocast='bf16' "
                      "will be emulated and is likely slower than float32; leave autocast=None", stacklevel=2)
    labels = _label_names(model)
    missing = [k for k in (*labels, *([cfg.loss_mask] if cfg.loss_mask else [])) if k not in train.tensors]
    if missing:
        raise KeyError(f"the training data lacks columns {missing} (labels / loss_mask); it has {list(train.tensors)}")
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
    best_score, best_epoch, best_state, bad_epochs = -np.inf, 0, None, 0
    rows, train_seconds = [], 0.0
    stop_reason = "epoch cap" if valid is not None else "no validation"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")

    from tqdm.auto import tqdm
    bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not _show_progress(cfg.progress), leave=False)
    for epoch in bar:
        model.train()
        start, total, n = time.perf_counter(), 0.0, 0
        for batch in train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            penalty = prepare_table_grads(row_tables, batch_l2, dense=not sparse)  # + the batch-rows L2's gradient
            if cfg.grad_clip:
                clip_grad_norm(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total += (float(loss.detach()) + penalty) * len(batch[labels[0]])
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
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
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
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(rows)
    return FitResult(pd.DataFrame(rows), best_epoch, sign * best_score if valid is not None else float("nan"),
                     train_seconds, cfg, stop_reason)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 16_384) -> np.ndarray | dict[str, np.ndarray]:
    """Click probabilities: an array for one task, a dict of arrays for several."""
    labels = _label_names(model)
    chunks: dict[str, list] = {}
    with eval_mode(model):
        for batch in data.batches(batch_size):
            logits, _ = _as_logits(model(batch), labels)
            for k, z in logits.items():
                chunks.setdefault(k, []).append(torch.sigmoid(z.float()).numpy())
    out = {k: np.concatenate(v) for k, v in chunks.items()}
    return out[labels[0]] if len(out) == 1 else out


def evaluate(model: nn.Module, data: TensorData, metrics=("auc", "logloss"), group: str = "user_id",
             batch_size: int = 16_384) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` for the first label (see :func:`ctrlib.metrics.compute`)."""
    labels = _label_names(model)
    p = predict(model, data, batch_size)
    p = p[labels[0]] if isinstance(p, dict) else p
    groups = data[group].numpy() if "gauc" in metrics else None
    return M.compute(data[labels[0]].numpy(), p, groups, metrics)

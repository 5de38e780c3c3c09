"""Data for the generative rankers (:class:`ctrlib.models.GenerativeRanker`): sequences, splits, scoring.

A user's sequence is one row of ``[U, N]`` arrays, left-padded (``item_id`` 0 = padding):
``item_id``, ``category`` (any attribute id), ``action`` (1..A), ``timestamp`` (seconds),
``label``, optionally ``true_p`` (simulated data). A split code per event says which window it
belongs to: 1 train, 2 valid, 3 test, 0 padding.

* Training (:func:`sequence_data`): one pass per user, a loss at every training event (the
  trainer's ``loss_mask``). The events are chronological, so with a split by time every training
  event precedes every held-out event of its user and the causal mask keeps the future out.
* Scoring (:func:`event_predictions`): the held-out events of a window, each predicted from its
  user's events before it with their true actions (what a server knows when the request comes;
  the oracle's true probability uses the same information). Its own action is never seen: the
  models' masks ensure it, and :func:`serve_events` scores through the serving path
  (:meth:`~ctrlib.models.GenerativeRanker.score_candidates`), which has no action slot for the
  candidate at all.
* The same events as impressions for DIN, DeepFM, ... (:func:`impressions_from_sequences`).
"""
from __future__ import annotations

import numpy as np
import torch

from ctrlib import metrics as M
from ctrlib.data.schema import Categorical, Schema, Sequence
from ctrlib.data.tensors import TensorData
from ctrlib.layers import eval_mode

SPLITS = {"train": 1, "valid": 2, "test": 3}
TRAIN_EVENT = "train_event"  # the loss-mask column of sequence_data


def sequence_schema(n_items: int, n_attrs: int, n_actions: int, max_events: int) -> Schema:
    """The generative rankers' schema: ``item_id``, ``category`` and ``action`` sequences of
    ``max_events``; ``action`` has ``n_actions + 2`` ids (0 pad, 1..A, A + 1 the placeholder);
    ``timestamp`` and ``split`` are carried as extras."""
    return Schema((Sequence("item_id", n_items, max_events), Sequence("category", n_attrs, max_events),
                   Sequence("action", n_actions + 2, max_events)), ("label",), ("timestamp", "split"))


def sequence_data(seqs: dict[str, np.ndarray], split: np.ndarray) -> TensorData:
    """``[U, N]`` tensors of the sequences, their ``split`` codes and the loss mask ``train_event``."""
    if split.shape != seqs["item_id"].shape:
        raise ValueError(f"split {split.shape} and sequences {seqs['item_id'].shape} differ in shape")
    keys = [k for k in ("item_id", "category", "action", "timestamp", "label", "true_p") if k in seqs]
    d = {k: torch.as_tensor(seqs[k]) for k in keys}
    d["label"] = d["label"].float()
    split = torch.as_tensor(split)
    return TensorData({**d, "split": split, TRAIN_EVENT: split == SPLITS["train"]})


def split_last(valid: np.ndarray, share: float = 0.1, min_events: int = 1) -> np.ndarray:
    """Per-user chronological split codes ``[U, N]`` for left-padded sequences (``valid`` True at
    real events): the last ``share`` of each user's events -> 3 (test), the ``share`` before -> 2
    (valid), the rest -> 1 (train), padding -> 0."""
    n = valid.sum(axis=1, keepdims=True)
    k = np.maximum(np.round(n * share).astype(int), min_events)
    from_end = valid.shape[1] - 1 - np.arange(valid.shape[1])[None, :]  # 0 at the last column
    code = np.where(from_end < k, 3, np.where(from_end < 2 * k, 2, 1))
    return np.where(valid, code, 0)


def split_by_global_time(timestamp: np.ndarray, valid: np.ndarray, valid_share: float = 0.1,
                         test_share: float = 0.1) -> np.ndarray:
    """Split codes ``[U, N]`` by one clock for all users: events at or after the time that leaves
    ``test_share`` of all events after it -> 3 (test), the ``valid_share`` before -> 2, earlier -> 1,
    padding (``valid`` False) -> 0. Events of the same second fall in the same window."""
    if not (0 < valid_share < 1 and 0 < test_share < 1 and valid_share + test_share < 1):
        raise ValueError(f"valid_share and test_share must be shares summing below 1, got {valid_share}, {test_share}")
    t = np.sort(timestamp[valid])
    if len(t) == 0:
        raise ValueError("no events to split (valid is False everywhere)")
    t_valid = t[int(len(t) * (1 - valid_share - test_share))]
    t_test = t[int(len(t) * (1 - test_share))]
    code = np.where(timestamp >= t_test, 3, np.where(timestamp >= t_valid, 2, 1))
    return np.where(valid, code, 0)


def event_predictions(model, data: TensorData, split: str = "test", batch_size: int = 256) -> dict[str, np.ndarray]:
    """The model's click probabilities at the events of ``split`` (flattened, user-major order),
    with their ``label``, user ``row`` and, when ``data`` has it, ``true_p``."""
    from ctrlib.train import predict  # ctrlib.train imports ctrlib.data: import when called

    p = predict(model, data, batch_size)  # [U, N]: one teacher-forced pass per user
    m = (data["split"] == SPLITS[split]).numpy()
    out = {"p": p[m], "label": data["label"].numpy()[m], "row": np.nonzero(m)[0]}
    if "true_p" in data.tensors:
        out["true_p"] = data["true_p"].numpy()[m]
    return out


def evaluate_events(model, data: TensorData, split: str = "test", metrics=("auc", "logloss")) -> dict[str, float]:
    """AUC / logloss (/ GAUC over users) of the predictions at ``split``'s events (the trainer's
    ``valid`` function for generative training: ``fit(model, train, lambda m: evaluate_events(m, data, "valid"))``)."""
    r = event_predictions(model, data, split)
    return M.compute(r["label"], r["p"], r["row"], metrics)


def impression_schema(n_items: int, n_attrs: int, n_actions: int, history: int) -> Schema:
    """The schema of :func:`impressions_from_sequences`' samples: candidate ``item_id``,
    ``category``, ``action`` (always the placeholder) and the three history sequences, each sharing
    its candidate's embedding table; ``user_id`` is carried for GAUC."""
    A = n_actions + 2
    return Schema((Categorical("item_id", n_items), Categorical("category", n_attrs), Categorical("action", A),
                   Sequence("hist_item_id", n_items, history, embedding="item_id"),
                   Sequence("hist_category", n_attrs, history, embedding="category"),
                   Sequence("hist_action", A, history, embedding="action")), ("label",), ("user_id",))


def impressions_from_sequences(seqs: dict[str, np.ndarray], split: np.ndarray, history: int, which: str,
                               placeholder: int, sample: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Impression-level samples (for DIN, DeepFM, ...) cut from the same sequences: one per event
    of split ``which`` (user-major order, as :func:`event_predictions`), with the ``history``
    events before it (left-padded) as sequence features ``hist_item_id``, ``hist_category``,
    ``hist_action`` (their true actions, as the generative models see them), ``hist_timestamp``,
    and the candidate's ``action`` = the placeholder (so DIN can pair ``hist_action`` with it).
    ``sample < 1`` keeps a random share of the events (seeded)."""
    if which not in SPLITS:
        raise ValueError(f"which must be one of {list(SPLITS)}, got {which!r}")
    U, N = split.shape
    rows, cols = np.nonzero(split == SPLITS[which])
    if sample < 1:
        keep = np.random.default_rng(seed).random(len(rows)) < sample
        rows, cols = rows[keep], cols[keep]
    pad = lambda a: np.concatenate([np.zeros((U, history), dtype=a.dtype), a], axis=1)  # noqa: E731
    idx = cols[:, None] + np.arange(history)[None, :]  # in padded coordinates: events cols-history..cols-1
    out = {
        "item_id": seqs["item_id"][rows, cols], "category": seqs["category"][rows, cols],
        "action": np.full(len(rows), placeholder),  # the candidate's action: unknown, as DFGR's fake token
        "hist_item_id": pad(seqs["item_id"])[rows[:, None], idx],
        "hist_category": pad(seqs["category"])[rows[:, None], idx],
        "hist_action": pad(seqs["action"])[rows[:, None], idx],
        "label": seqs["label"][rows, cols].astype(np.float32), "user_id": rows,
    }
    if "timestamp" in seqs:
        out["timestamp"] = seqs["timestamp"][rows, cols]
        out["hist_timestamp"] = pad(seqs["timestamp"])[rows[:, None], idx]
    if "true_p" in seqs:
        out["true_p"] = seqs["true_p"][rows, cols]
    t = {k: torch.as_tensor(v) for k, v in out.items()}
    for k in ("item_id", "category", "action", "hist_item_id", "hist_category", "hist_action", "user_id"):
        t[k] = t[k].long()
    t["label"] = t["label"].float()
    return t


@torch.no_grad()
def serve_events(model, impressions: dict[str, torch.Tensor], batch_size: int = 1024) -> np.ndarray:
    """Click probabilities of impression rows through the serving path: each row's history (its
    ``hist_*`` columns, true actions) is encoded once and its candidate scored after it with
    :meth:`~ctrlib.models.GenerativeRanker.score_candidates`, which never sees the candidate's action."""
    keys = ("item_id", "category", "action", "timestamp")
    out = []
    with eval_mode(model):
        for s in range(0, len(impressions["item_id"]), batch_size):
            hist = {k: impressions[f"hist_{k}"][s:s + batch_size] for k in keys}
            cand = {k: impressions[k][s:s + batch_size, None] for k in ("item_id", "category", "timestamp")}
            out.append(torch.sigmoid(model.score_candidates(hist, cand))[:, 0].numpy())
    return np.concatenate(out)

"""Behaviour-sequence samples: each prediction carries the user's history *before* it.

One builder serves every dataset (MovieLens-100K, the simulator's behaviour log, your own logs):

>>> df = build_behaviour_samples(samples, max_len=20, history_features=("category",))

For every row of ``samples`` (a target item at a prediction time ``timestamp``) it adds

* ``hist_item_id``: the ids of the user's last ``max_len`` behaviours with a timestamp **strictly
  earlier** than the prediction time, oldest first, left-padded with 0 (an int array per row, so
  ``TensorData.from_frame`` stacks the column into ``[N, max_len]``);
* ``hist_<feature>`` for each of ``history_features`` (e.g. the category of each behaviour);
* ``hist_timestamp`` (0 at padding) and ``hist_len`` (number of real behaviours);
* optionally ``negatives`` sampled rows per sample: same user, same timestamp, same history, an
  item the user never interacted with, label 0 (``is_negative = 1``).

The behaviours come from ``log`` (default: ``samples`` themselves, as for MovieLens where every
rating is both a prediction target and, later, a behaviour). Strictly-earlier means ratings given
in the same second never see each other, so no feature holds anything from the prediction time
or after it: a split by time on the output is leak-free.

Everything is vectorised: one composite-key ``searchsorted`` finds, for every sample, where its
user's history ends in the sorted log, then one fancy index gathers ``[N, max_len]`` at once.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema, Sequence
from ctrlib.data.vocab import Vocab

HIST = "hist_"


def history_index(query_user, query_time, log_user, log_time, max_len: int) -> np.ndarray:
    """Positions in the log of each query's history: ``[N, max_len]``, -1 at (left) padding.

    ``log_user``/``log_time`` must be sorted by (user, time). Row i holds the last ``max_len``
    log rows of user ``query_user[i]`` whose time is strictly below ``query_time[i]``, oldest
    first. Users and times are non-negative-offset integers (any ints; they are shifted).
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    qu, qt = np.asarray(query_user, np.int64), np.asarray(query_time, np.int64)
    lu, lt = np.asarray(log_user, np.int64), np.asarray(log_time, np.int64)
    if len(lu) and (np.diff(lu) < 0).any() | ((np.diff(lu) == 0) & (np.diff(lt) < 0)).any():
        raise ValueError("the log must be sorted by (user, time)")
    if len(lu) == 0 or len(qu) == 0:
        return np.full((len(qu), max_len), -1, dtype=np.int64)
    t0 = min(qt.min(), lt.min())
    u0 = min(qu.min(), lu.min())
    span = int(max(qt.max(), lt.max()) - t0 + 2)
    if (int(max(qu.max(), lu.max()) - u0) + 1) * span >= 2 ** 62:
        raise ValueError("user ids x time span too large for a composite int64 key; re-encode users")
    log_key = (lu - u0) * span + (lt - t0)
    start = np.searchsorted(log_key, (qu - u0) * span, side="left")           # first row of the user
    end = np.searchsorted(log_key, (qu - u0) * span + (qt - t0), side="left")  # first row at time >= t
    count = np.minimum(end - start, max_len)
    j = np.arange(max_len)
    idx = end[:, None] - max_len + j[None, :]                                  # [N, L], oldest first
    return np.where(j[None, :] >= (max_len - count)[:, None], idx, -1)


def gather(values: np.ndarray, idx: np.ndarray, pad=0) -> np.ndarray:
    """``values[idx]`` with ``pad`` wherever ``idx`` is -1 (``[N, L]``)."""
    values = np.asarray(values)
    out = values[np.maximum(idx, 0)]
    return np.where(idx >= 0, out, pad)


def _as_rows(arr: np.ndarray) -> list:
    return list(arr)  # one equal-length array per row: what TensorData.from_frame stacks


def build_behaviour_samples(samples: pd.DataFrame, max_len: int, log: pd.DataFrame | None = None, *,
                            user: str = "user_id", item: str = "item_id", time: str = "timestamp",
                            label: str = "label", history_features=(), negatives: int = 0,
                            items: pd.DataFrame | None = None, item_features=(), seed: int = 0) -> pd.DataFrame:
    """``samples`` with each user's history before each prediction, plus optional sampled negatives.

    Args:
        samples: one row per prediction: ``user``, ``item``, ``time``, ``label`` and any other
            columns (user and item side features) that are carried along.
        max_len: history length L (the last L behaviours; shorter histories are left-padded with 0).
        log: the behaviours histories are made of (``user``, ``item``, ``time`` and the
            ``history_features`` columns); default ``samples`` (e.g. every earlier rating).
        history_features: log columns gathered into ``hist_<name>`` beside ``hist_<item>``.
        negatives: sampled negatives per sample row, at the sample's timestamp and with its
            history, from items the user never interacted with (in ``samples`` or ``log``).
        items: the item table (one row per item: ``item`` and ``item_features``) negatives are
            drawn from, and where their side features are looked up. Required when ``negatives``.
        item_features: item side columns of ``samples`` to replace for a negative's item.
        seed: seeds the negative sampling.

    Returns the rows sorted by time (stable), index reset, with ``hist_*`` columns, ``hist_len``
    and ``is_negative``.
    """
    C.integer("max_len", max_len, 1)
    C.integer("negatives", negatives, 0)
    need = [c for c in (user, item, time) if c not in samples.columns]
    if need:
        raise KeyError(f"samples lack columns {need}; they have {list(samples.columns)}")
    log = samples if log is None else log
    need = [c for c in (user, item, time, *history_features) if c not in log.columns]
    if need:
        raise KeyError(f"the behaviour log lacks columns {need}; it has {list(log.columns)}")
    log = log.sort_values([user, time], kind="stable")
    out = samples.reset_index(drop=True).copy()
    idx = history_index(out[user].to_numpy(), out[time].to_numpy(), log[user].to_numpy(),
                        log[time].to_numpy(), max_len)
    for col in (item, *history_features):
        out[HIST + col] = _as_rows(gather(log[col].to_numpy(), idx).astype(np.int64))
    out[HIST + time] = _as_rows(gather(log[time].to_numpy(), idx).astype(np.int64))
    out["hist_len"] = (idx >= 0).sum(axis=1)
    out["is_negative"] = np.zeros(len(out), dtype=np.int64)
    if negatives:
        out = pd.concat([out, _negatives(out, log, negatives, items, user, item, label, item_features, seed)],
                        ignore_index=True)
    return out.sort_values(time, kind="stable").reset_index(drop=True)


def _negatives(out: pd.DataFrame, log: pd.DataFrame, k: int, items: pd.DataFrame | None, user: str, item: str,
               label: str, item_features, seed: int) -> pd.DataFrame:
    """``k`` rows per row of ``out``: same user, time and history; an item the user never touched."""
    if items is None:
        raise ValueError("negatives need the item table `items` to draw from")
    missing = [c for c in (item, *item_features) if c not in items.columns]
    if missing:
        raise KeyError(f"the item table lacks columns {missing}")
    catalogue = items[item].to_numpy().astype(np.int64)
    users = np.concatenate([out[user].to_numpy(), log[user].to_numpy()]).astype(np.int64)
    seen_items = np.concatenate([out[item].to_numpy(), log[item].to_numpy()]).astype(np.int64)
    width = int(max(catalogue.max(), seen_items.max())) + 1
    seen = np.unique(users * width + seen_items)                   # (user, item) pairs, as sorted keys
    rng = np.random.default_rng([seed, 4242])
    rows = np.repeat(np.arange(len(out)), k)
    row_user = out[user].to_numpy().astype(np.int64)[rows]
    drawn = catalogue[rng.integers(0, len(catalogue), len(rows))]
    for _ in range(1000):  # rejection sampling: redraw only the collisions
        bad = np.isin(row_user * width + drawn, seen, assume_unique=False)
        if not bad.any():
            break
        drawn[bad] = catalogue[rng.integers(0, len(catalogue), int(bad.sum()))]
    else:
        raise ValueError("could not draw negatives: some users have interacted with (nearly) every item")
    neg = out.iloc[rows].reset_index(drop=True).copy()
    neg[item] = drawn
    if item_features:
        table = items.set_index(item)
        for col in item_features:
            neg[col] = table[col].reindex(drawn).to_numpy()
    if label in neg.columns:
        neg[label] = np.zeros(len(neg), dtype=out[label].dtype)
    neg["is_negative"] = 1
    return neg


# --------------------------------------------------------------------------- MovieLens-100K
ML_USER_FIELDS = ("user_id", "age", "gender", "occupation")
ML_ITEM_FIELDS = ("item_id", "genre", "decade")


def movielens_frames(ds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ratings as model-ready events and the item table, every categorical field encoded as ids.

    Events: ``user_id``, ``item_id`` (the raw MovieLens ids, 1-based: 0 stays padding), ``age``
    (7 buckets), ``gender``, ``occupation``, ``genre`` (an item's first listed genre), ``decade``
    (of the title year), ``rating``, ``label`` = rating >= 4, ``timestamp``.
    """
    users = ds.users.copy()
    users["age"] = np.digitize(users["age"], [18, 25, 35, 45, 50, 56])
    items = ds.items.copy()
    items["genre"] = items["genres"].fillna("unknown").str.split("|").str[0]
    items["decade"] = (items["year"] // 10 * 10).astype("Float64").fillna(-1).astype(int)
    for col in ("gender", "occupation", "age"):
        users[col] = Vocab.fit(users[col]).encode(users[col])
    for col in ("genre", "decade"):
        items[col] = Vocab.fit(items[col]).encode(items[col])
    events = (ds.ratings.merge(users[list(ML_USER_FIELDS)], on="user_id", how="left")
              .merge(items[list(ML_ITEM_FIELDS)], on="item_id", how="left"))
    events["label"] = (events["rating"] >= 4).astype(np.float32)
    return events, items[list(ML_ITEM_FIELDS)].reset_index(drop=True)


def movielens_samples(ds, max_len: int = 20, negatives: int = 0, seed: int = 0) -> tuple[pd.DataFrame, Schema]:
    """MovieLens-100K as behaviour-sequence samples and their schema.

    Every rating is a sample (label = rating >= 4) whose history is the user's earlier ratings
    (items and genres), whatever their score: a rating says the user watched the film.
    """
    events, items = movielens_frames(ds)
    df = build_behaviour_samples(events, max_len, history_features=("genre",), negatives=negatives,
                                 items=items, item_features=("genre", "decade"), seed=seed)
    return df, movielens_schema(ds, max_len, events)


def movielens_schema(ds, max_len: int, events: pd.DataFrame | None = None) -> Schema:
    if events is None:
        events, _ = movielens_frames(ds)
    sizes = {c: int(events[c].max()) + 2 for c in (*ML_USER_FIELDS, *ML_ITEM_FIELDS)}
    sizes["item_id"] = int(ds.items["item_id"].max()) + 2
    sizes["user_id"] = int(ds.users["user_id"].max()) + 2
    features = [Categorical(c, sizes[c]) for c in (*ML_USER_FIELDS, *ML_ITEM_FIELDS)]
    features += [Sequence("hist_item_id", sizes["item_id"], max_len, embedding="item_id"),
                 Sequence("hist_genre", sizes["genre"], max_len, embedding="genre")]
    return Schema(tuple(features), ("label",), ())

"""Long-tail sparse ids (the one-epoch chapter): a DIEN-style "Amazon Book" with an exact oracle.

What it plants (the setup of the CIKM 2022 paper's official code, at CPU scale):

* a catalogue of ``n_items`` items with Zipf(``zipf``) popularity ``pop_i ∝ rank_i^-zipf`` and a
  category each (``n_categories``), so most item ids are rare: the long tail;
* users with a taste ``theta_u`` over categories: Dirichlet(``taste_alpha``) (diffuse tastes) or,
  with ``taste_categories = k``, uniform over k categories drawn at random;
* a user engages with item i with probability ``q_u(i) = theta_u[c_i] * pop_i / Pop[c_i]`` (pick a
  category by taste, then an item by popularity within it; ``Pop[c]`` is the category's total);
* each user has a history of ``history_len`` engaged items and yields **two rows** sharing it: one
  positive (an engaged item, drawn from ``q_u``) and one negative (an item drawn by global
  popularity ``pop``);
* a **user-disjoint** split: train, validation and test users are different people, so the test
  users' id rows are never trained.

Oracle (exact): a row is a positive or a negative with prior 1/2 each, so by Bayes

    P(y = 1 | u, i) = q_u(i) / (q_u(i) + pop_i)

given the user's true taste, the ceiling no model can pass (``true_p``). ``min_count`` maps item
ids seen fewer than ``min_count`` times in the training rows (targets and histories) to one
out-of-vocabulary id: the paper's "filter" knob for id sparsity. ``n_pretrain_users`` more users
(same tastes model, their own generator, so the labelled rows do not change) have a history and no
labelled rows: the wider engagement logs of the two-stage paper's pre-training. Everything is seeded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema, Sequence
from ctrlib.data.tensors import TensorData

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class LongTailConfig:
    n_train_users: int = 20_000
    n_valid_users: int = 2_000
    n_test_users: int = 5_000
    n_items: int = 20_000
    n_categories: int = 100
    zipf: float = 0.9               # item popularity exponent
    taste_alpha: float = 0.05       # Dirichlet concentration of a user's taste over categories
    taste_categories: int | None = None  # k: a taste uniform over k categories (replaces the Dirichlet)
    history_len: int = 10
    n_pretrain_users: int = 0       # more users with a history only (no labelled rows): pre-training data
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train_users", "n_valid_users", "n_test_users", "n_items", "n_categories", "history_len"):
            C.integer(name, getattr(self, name), 1)
        C.integer("n_pretrain_users", self.n_pretrain_users, 0)
        C.real("zipf", self.zipf, 0)
        C.real("taste_alpha", self.taste_alpha, 0, low_open=True)
        if self.taste_categories is not None:
            C.integer("taste_categories", self.taste_categories, 1, self.n_categories)


class LongTailWorld:
    """Users, a long-tail catalogue and the two rows per user; ``split(name)`` gives its arrays."""

    def __init__(self, config: LongTailConfig | None = None):
        cfg = self.config = config or LongTailConfig()
        rng = np.random.default_rng([cfg.seed, 1616])
        I, K = cfg.n_items, cfg.n_categories
        self.item_category = rng.integers(0, K, I)                                  # [I]
        self.popularity = 1.0 / np.arange(1, I + 1) ** cfg.zipf                      # rank = item index
        self.popularity /= self.popularity.sum()
        self.category_popularity = np.bincount(self.item_category, self.popularity, K)  # Pop[c]  [K]
        n_users = cfg.n_train_users + cfg.n_valid_users + cfg.n_test_users
        if cfg.taste_categories is None:
            self.taste = rng.dirichlet(np.full(K, cfg.taste_alpha), n_users)         # [U, K]
        else:
            self.taste = np.zeros((n_users, K))
            picks = np.argsort(rng.random((n_users, K)), axis=1)[:, :cfg.taste_categories]
            np.put_along_axis(self.taste, picks, 1.0 / cfg.taste_categories, axis=1)
        # items of each category, with their popularity cdf within it
        self._by_category = [np.flatnonzero(self.item_category == c) for c in range(K)]
        self._cdf = [np.cumsum(self.popularity[ids]) / max(self.popularity[ids].sum(), 1e-300)
                     for ids in self._by_category]
        users = np.arange(n_users)
        self._rows = self._draw(users, rng)
        self._pretrain_history = self._pretrain_histories(cfg)
        bounds = np.cumsum([cfg.n_train_users, cfg.n_valid_users])
        self._user_split = np.digitize(users, bounds)                                # 0 train, 1 valid, 2 test
        self.min_count = 1
        self._item_map = np.arange(I) + 1                                             # item -> id (0 = padding)

    # -- the generative model ----------------------------------------------------------------

    def engagement_probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``q_u(i) = theta_u[c_i] pop_i / Pop[c_i]`` for paired arrays of users and items."""
        c = self.item_category[items]
        return self.taste[users, c] * self.popularity[items] / self.category_popularity[c]

    def true_probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The oracle: ``P(y = 1 | u, i) = q_u(i) / (q_u(i) + pop_i)``."""
        q = self.engagement_probability(users, items)
        return q / (q + self.popularity[items])

    def _engaged_items(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``users`` drawn from ``q_u``: a category by taste, then an item by popularity."""
        K = self.config.n_categories
        # inverse cdf over every user's taste at once: row u's cdf shifted by u, searched at u + r
        cdf = np.cumsum(self.taste, axis=1)
        cdf = (cdf / cdf[:, -1:] + np.arange(len(cdf))[:, None]).ravel()           # [U * K]
        r = np.minimum(rng.random(len(users)), 1 - 1e-12)
        cats = np.minimum(np.searchsorted(cdf, users + r, side="right") - users * K, K - 1)
        items = np.empty(len(users), dtype=np.int64)
        r = rng.random(len(users))
        for c in np.unique(cats):
            at = np.flatnonzero(cats == c)
            ids, cdf_c = self._by_category[c], self._cdf[c]
            if len(ids) == 0:  # an empty category is never chosen by a taste that includes it (tiny catalogues)
                raise ValueError(f"category {c} has no items; use fewer categories than items")
            items[at] = ids[np.minimum(np.searchsorted(cdf_c, r[at]), len(ids) - 1)]
        return items

    def _pretrain_histories(self, cfg: LongTailConfig) -> np.ndarray:
        """``[n_pretrain_users, L]`` item histories of the unlabelled users (own generator and tastes)."""
        if not cfg.n_pretrain_users:
            return np.zeros((0, cfg.history_len), dtype=np.int64)
        rng = np.random.default_rng([cfg.seed, 1618])
        labelled = len(self.taste)
        K, P = cfg.n_categories, cfg.n_pretrain_users
        if cfg.taste_categories is None:
            extra = rng.dirichlet(np.full(K, cfg.taste_alpha), P)
        else:
            extra = np.zeros((P, K))
            picks = np.argsort(rng.random((P, K)), axis=1)[:, :cfg.taste_categories]
            np.put_along_axis(extra, picks, 1.0 / cfg.taste_categories, axis=1)
        self.taste = np.concatenate([self.taste, extra])
        users = np.arange(labelled, labelled + P)
        return self._engaged_items(np.repeat(users, cfg.history_len), rng).reshape(P, cfg.history_len)

    def _draw(self, users: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        L, U = self.config.history_len, len(users)
        history = self._engaged_items(np.repeat(users, L), rng).reshape(U, L)            # [U, L]
        positive = self._engaged_items(users, rng)                                        # [U]
        negative = np.minimum(np.searchsorted(np.cumsum(self.popularity), rng.random(U)), self.config.n_items - 1)
        # two rows per user: positive, then negative, sharing the history
        user = np.repeat(users, 2)
        item = np.stack([positive, negative], 1).ravel()
        return {"user": user, "item": item, "history": np.repeat(history, 2, axis=0),
                "label": np.tile([1.0, 0.0], U), "true_p": self.true_probability(user, item)}

    # -- ids and splits ----------------------------------------------------------------------

    def filter_rare_items(self, min_count: int) -> LongTailWorld:
        """Map items seen fewer than ``min_count`` times in the training rows (targets and histories)
        to one out-of-vocabulary id (the paper's ``--filter``); ``min_count = 1`` keeps every id."""
        C.integer("min_count", min_count, 1)
        train = self._user_split[self._rows["user"]] == 0
        seen = np.concatenate([self._rows["item"][train], self._rows["history"][train].ravel()])
        counts = np.bincount(seen, minlength=self.config.n_items)
        kept = counts >= min_count
        self._item_map = np.where(kept, np.cumsum(kept), kept.sum() + 1)          # rare items -> OOV
        self.min_count = min_count
        return self

    @property
    def n_item_ids(self) -> int:
        """Rows of the item table: padding 0, the kept items, the OOV id."""
        return int(self._item_map.max()) + 1 if self.min_count > 1 else self.config.n_items + 1

    @property
    def schema(self) -> Schema:
        cfg = self.config
        n_users = cfg.n_train_users + cfg.n_valid_users + cfg.n_test_users
        return Schema((Categorical("user_id", n_users + 1), Categorical("item_id", self.n_item_ids),
                       Categorical("category", cfg.n_categories + 1),
                       Sequence("hist_item_id", self.n_item_ids, cfg.history_len, embedding="item_id"),
                       Sequence("hist_category", cfg.n_categories + 1, cfg.history_len, embedding="category")),
                      extras=("true_p",))

    def split(self, name: str) -> dict[str, np.ndarray]:
        """The rows of one split (``train``, ``valid``, ``test``) as id arrays (ids from 1; 0 = padding),
        with ``label`` and ``true_p``."""
        C.choice("split", name, SPLITS)
        at = self._user_split[self._rows["user"]] == SPLITS.index(name)
        r = {k: v[at] for k, v in self._rows.items()}
        return {"user_id": r["user"] + 1, "item_id": self._item_map[r["item"]],
                "category": self.item_category[r["item"]] + 1,
                "hist_item_id": self._item_map[r["history"]], "hist_category": self.item_category[r["history"]] + 1,
                "label": r["label"], "true_p": r["true_p"]}

    def tensors(self, name: str) -> TensorData:
        """One split as a :class:`TensorData` for the schema's models."""
        s = self.split(name)
        return TensorData({k: torch.as_tensor(v, dtype=torch.float32 if k in ("label", "true_p") else torch.long)
                           for k, v in s.items()})

    def cooccurrence_pairs(self, splits=(*SPLITS, "pretrain"), seed: int = 0) -> TensorData:
        """Item pairs engaged by the same user (two different positions of one history), for
        contrastive pre-training: ``item_id`` and ``context_item_id``, one pair per user and history
        position. Labels are not used, only histories (serving-time features, so the test users'
        histories may be included: a transductive setup); ``"pretrain"`` adds the unlabelled users'
        histories (the paper's "broader data coverage")."""
        rng = np.random.default_rng([self.config.seed, 1617, seed])
        hist = []
        for name in splits:
            if name == "pretrain":
                hist.append(self._item_map[self._pretrain_history])
            else:
                hist.append(self.split(name)["hist_item_id"][::2])                    # one history per user

        h = np.concatenate(hist)                                                      # [U, L]
        L = h.shape[1]
        other = (np.arange(L)[None, :] + rng.integers(1, L, h.shape)) % L            # another position
        anchor, context = h.ravel(), np.take_along_axis(h, other, 1).ravel()
        keep = (anchor != context) & (anchor > 0) & (context > 0)
        return TensorData({"item_id": torch.as_tensor(anchor[keep]), "context_item_id": torch.as_tensor(context[keep])})


__all__ = ["LongTailConfig", "LongTailWorld", "SPLITS"]

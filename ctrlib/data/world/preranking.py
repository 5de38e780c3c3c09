"""Pre-ranking requests (the TARQ chapter): :class:`PreRankingWorld`.

Built on the multi-interest behaviour stream (:mod:`.histories`): every user has a stream of
behaviours in interest sessions, an impression's history is the user's last ``history_len``
behaviours strictly before it, and the click gains ``history_match * (share of the history in the
candidate's category)``. On top of that this module plants what a vector-product model cannot
hold in one user vector and target attention can find:

* **requests**: impressions come in requests of ``candidates`` items shown to one user at one
  time (the world's ``request_size``), each with a ``request_id``: the candidate set a
  pre-ranker scores at once;
* **recently seen brands** (:class:`BrandMatch`): with ``count`` = how many of the history's
  behaviours share the candidate's brand (300 brands by default, about 12 per category),

      z_brand = brand_match * (1 - 2 ** -count)        (0 for none, 1/2 for one, 3/4 for two, ...)

  and the history's brands as a ``hist_brand`` sequence (sharing the ``brand`` table). The term
  depends on *which* of a few hundred brands the candidate has, so a user vector of a few dozen
  dimensions cannot hold it for every candidate; attention with the candidate as the query can.

The oracle is exact: ``true_p = sigmoid(bias + sum of terms)``, the ``z_brand`` term included (the
bias is re-solved with it, so the mean click probability stays ``base_ctr``). The brand knob draws
nothing at random; the stream and the impressions come from the world's own generators.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Schema, Sequence
from ctrlib.data.simulator import CTRWorld
from ctrlib.data.world.base import Knob

FIELDS = ("age", "gender", "city", "device", "item_id", "category", "brand", "price", "hour",
          "weekday")
ITEM_FIELDS = ("item_id", "category", "brand", "price")  # the item tower's fields


@dataclass(frozen=True)
class PreRankingConfig:
    """The pre-ranking world's knobs; strengths on the logit scale."""

    n_users: int = 2_000
    n_items: int = 1_500
    n_categories: int = 24
    n_brands: int = 300
    history_len: int = 30
    history_match: float = 1.0   # x share of the history in the candidate's category
    brand_match: float = 2.0     # x (1 - 2**-count), count = history behaviours of the candidate's brand
    candidates: int = 10         # items per request
    base_ctr: float = 0.15
    seed: int = 0

    def __post_init__(self):
        C.integer("PreRankingConfig.n_users", self.n_users, 1)
        C.integer("PreRankingConfig.n_items", self.n_items, 2)
        C.integer("PreRankingConfig.history_len", self.history_len, 1,
                  hint="the brand term reads the history")
        C.integer("PreRankingConfig.candidates", self.candidates, 1)
        C.real("PreRankingConfig.brand_match", self.brand_match, 0,
               hint="a strength on the logit scale; 0 turns the brand term off")


class BrandMatch(Knob):
    """The ``brand`` term and the ``hist_brand`` sequence (see the module docstring). Reads the
    behaviour stream's ``hist_idx``, so it must come after the stream in ``world.knobs``."""

    def __init__(self, world, strength: float):
        super().__init__(world)
        if world.stream is None:
            raise ValueError("BrandMatch needs the behaviour stream: history_match > 0")
        self.strength = strength

    def features(self, f):
        idx, log = f["hist_idx"], self.world.stream.log
        brands = np.where(idx >= 0, self.world.item_brand[log["item"][np.maximum(idx, 0)]], -1)  # [N, L]
        return {"hist_brand": brands, "brand_count": (brands == f["brand"][:, None]).sum(axis=1)}

    def terms(self, f):
        return {"brand": self.strength * (1.0 - 2.0 ** -f["brand_count"])}

    def sequence_columns(self, f):
        return {"hist_brand": list(f["hist_brand"] + 1), "brand_count": f["brand_count"]}  # 0 = padding

    def sequences(self):
        return [Sequence("hist_brand", self.world.vocab_sizes()["brand"], self.config.history_len,
                         embedding="brand")]


class PreRankingWorld:
    """A multi-interest world with requests of ``candidates`` items and the brand term.

    >>> pw = PreRankingWorld(PreRankingConfig(seed=0))
    >>> df = pw.sample(2_000, seed=1)      # 2,000 requests x 10 candidates, with request_id
    >>> schema = pw.schema()                # FIELDS + hist_item_id, hist_category, hist_brand
    """

    def __init__(self, config: PreRankingConfig | None = None, **overrides):
        cfg = config or PreRankingConfig()
        if overrides:
            cfg = PreRankingConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        self.world = CTRWorld(n_users=cfg.n_users, n_items=cfg.n_items, n_categories=cfg.n_categories,
                              n_brands=cfg.n_brands, history_len=cfg.history_len, history_match=cfg.history_match,
                              request_size=cfg.candidates, base_ctr=cfg.base_ctr, seed=cfg.seed)
        self.brand = BrandMatch(self.world, cfg.brand_match)
        self.world.knobs.append(self.brand)                       # after the stream: it reads hist_idx
        self.world.bias = self.world._solve_bias(cfg.base_ctr)    # the brand term moves the mean click rate

    def schema(self, fields=FIELDS) -> Schema:
        """The features: ``fields``, then ``hist_item_id``, ``hist_category``, ``hist_brand``; the
        ``request_id`` and ``user_id`` ride along as extras."""
        return self.world.schema(fields, extras=("user_id", "request_id"))

    def sample(self, n_requests: int, seed: int = 0) -> pd.DataFrame:
        """``n_requests`` requests of ``candidates`` impressions each, sorted by time; columns as
        :meth:`CTRWorld.sample` plus ``request_id`` (0, 1, ... in time order) and ``brand_count``."""
        C.integer("n_requests", n_requests, 1)
        df = self.world.sample(n_requests * self.config.candidates, seed=seed)
        df.insert(0, "request_id", df.groupby(["user_id", "timestamp"], sort=False).ngroup())
        return df

"""Behaviour histories (the user-behaviour chapter): ``WorldConfig(history_len=L)``, optionally
``history_match=m``.

What it plants, in one of two forms (both give the schema ``hist_item_id`` and ``hist_category``
sequences that share the item and category tables):

* :class:`StaticHistories` (``history_len > 0``, ``history_match == 0``): each user's last L clicks
  before day 0, mostly from their interests, the same for all of a user's impressions. They only
  describe the user; the click does not depend on them beyond that, so there is no oracle term.
* :class:`BehaviourStream` (``history_match > 0``): multi-interest, time-ordered histories. Every
  user has a stream of behaviours in sessions, each session on one of the user's interests; an
  impression's history is the user's last L behaviours strictly before it (also ``hist_timestamp``
  and ``history_share`` columns). Oracle term ``history``:
      z_history = history_match * (share of the history in the candidate's category)
  Drawn from its own generator (seed, 101), so the default world's streams are untouched.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ctrlib.data.schema import Sequence
from ctrlib.data.sequences import history_index
from ctrlib.data.world.base import SECONDS_PER_DAY, Knob, sample_from_rows


def history_sequences(world) -> list[Sequence]:
    """``hist_item_id`` and ``hist_category``, sharing the item and category tables."""
    sizes, L = world.vocab_sizes(), world.config.history_len
    return [Sequence("hist_item_id", sizes["item_id"], L, embedding="item_id"),
            Sequence("hist_category", sizes["category"], L, embedding="category")]


class StaticHistories(Knob):
    """Each user's last ``history_len`` clicks before day 0: mostly from their interests. Drawn from
    the world's main generator ``rng``, after everything else."""

    def __init__(self, world, rng: np.random.Generator):
        super().__init__(world)
        cfg = self.config
        U, L = cfg.n_users, cfg.history_len
        rows = np.repeat(np.arange(U), L)
        cats = sample_from_rows(world._user_interest_cdf, rows, rng)
        items = world._items_in_categories(cats, rng)
        noise = rng.random(U * L) < 0.2
        items[noise] = np.minimum(np.searchsorted(world._item_cdf, rng.random(noise.sum())), cfg.n_items - 1)
        hist = items.reshape(U, L) + 1  # ids start at 1; 0 is padding
        lengths = rng.integers(L // 4, L + 1, U)  # some users have shorter histories: left-pad
        hist[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0
        self.histories = hist

    def sequence_columns(self, f):
        hist = self.histories[f["user"]]
        return {"hist_item_id": list(hist),
                "hist_category": list(np.where(hist > 0, self.world.item_category[np.maximum(hist - 1, 0)] + 1, 0))}

    def sequences(self):
        return history_sequences(self.world)


class BehaviourStream(Knob):
    """Every user's behaviour stream, sorted by (user, time): sessions on one interest each.

    Each user has the same number of behaviours, spread uniformly over a pre-period (long enough
    to fill a history) and the n_days of impressions. A new session starts with probability
    1 / session_len at each behaviour and picks a category from the user's interests; 10% of
    behaviours stray to a uniformly random category. With time patterns, sessions follow the
    clock and events draw behaviours to their category (:mod:`ctrlib.data.world.time_patterns`).
    """

    def __init__(self, world, time_patterns=None):
        super().__init__(world)
        cfg = self.config
        if cfg.history_len <= 0:
            raise ValueError("history_match needs history_len > 0 (the history the click depends on)")
        rng = np.random.default_rng([cfg.seed, 101])
        U, C = cfg.n_users, cfg.n_categories
        pre_days = int(np.ceil(cfg.history_len / cfg.behaviours_per_day)) + 1
        M = max(1, int(round(cfg.behaviours_per_day * (cfg.n_days + pre_days))))
        t = rng.integers(-pre_days * SECONDS_PER_DAY, cfg.n_days * SECONDS_PER_DAY, (U, M))
        t.sort(axis=1)
        new_session = rng.random((U, M)) < 1 / max(cfg.session_len, 1.0)
        new_session[:, 0] = True
        session = np.cumsum(new_session.ravel()) - 1                       # global session ids
        session_user = np.repeat(np.arange(U), M)[new_session.ravel()]
        session_cat = sample_from_rows(world._user_interest_cdf, session_user, rng)
        cats = session_cat[session]
        if time_patterns is not None:  # time-patterned interests: redraw from their own generator
            cats = time_patterns.session_categories(session, new_session, t, cats)
        stray = rng.random(U * M) < 0.1
        cats[stray] = rng.integers(0, C, int(stray.sum()))
        if time_patterns is not None and cfg.time_events:
            cats = time_patterns.event_behaviours(t.ravel(), cats)
        items = world._items_in_categories(cats, rng)
        self.log = {"user": np.repeat(np.arange(U), M), "timestamp": t.ravel(), "item": items,
                    "category": world.item_category[items]}

    def frame(self) -> pd.DataFrame:
        """The stream with model ids (1-based): ``user_id``, ``item_id``, ``category``, ``timestamp``."""
        log = self.log
        return pd.DataFrame({"user_id": log["user"] + 1, "item_id": log["item"] + 1,
                             "category": log["category"] + 1, "timestamp": log["timestamp"]})

    def features(self, f):
        """The last history_len behaviours strictly before each impression, and their category share."""
        log = self.log
        idx = history_index(f["user"], f["timestamp"], log["user"], log["timestamp"], self.config.history_len)
        cats = np.where(idx >= 0, log["category"][np.maximum(idx, 0)], -1)
        n = (idx >= 0).sum(axis=1)
        return {"hist_idx": idx, "history_share": (cats == f["category"][:, None]).sum(axis=1) / np.maximum(n, 1)}

    def terms(self, f):
        return {"history": self.config.history_match * f["history_share"]}

    def sequence_columns(self, f):
        idx, log = f["hist_idx"], self.log
        past = np.maximum(idx, 0)
        return {"hist_item_id": list(np.where(idx >= 0, log["item"][past] + 1, 0)),
                "hist_category": list(np.where(idx >= 0, log["category"][past] + 1, 0)),
                "hist_timestamp": list(np.where(idx >= 0, log["timestamp"][past], 0)),
                "history_share": f["history_share"]}

    def sequences(self):
        return history_sequences(self.world)

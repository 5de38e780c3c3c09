"""Time-patterned interests (the Time Matters chapter): ``WorldConfig(time_interests=s, time_events=e)``.

What it plants, from its own generator (seed, 505):

* *periodic interests* (``time_interests > 0``): a user's interests, strongest first, peak at
  distinct dayparts (8, 13, 19 or 23 h in a random order per user, +-1 h jitter), and each has a
  day type: any day (50 %), weekdays only (25 %) or weekends only (25 %). How active interest c of
  user u is at time t (0..1) is :meth:`TimePatterns.interest_activation`. With a behaviour stream
  (``history_match > 0``) each session's category follows the same clock.
* *dated events* (``time_events > 0``): from a random offset, every TIME_EVENT_EVERY days an event
  boosts one random category for everyone for TIME_EVENT_DAYS days; the platform shows it to a
  TIME_EVENT_EXPOSURE share of untargeted impressions and of everyone's behaviours.

Oracle term ``time``:
    z_time = time_interests * (2 a(u, c, t) - 1) * [c is one of u's interests]
             + time_events * [an event on category c runs on t's day]
"""
from __future__ import annotations

import numpy as np

from ctrlib.data.world.base import SECONDS_PER_DAY, Knob

TIME_EVENT_EVERY, TIME_EVENT_DAYS = 5, 3  # time-point events: one every 5 days, lasting 3 days
TIME_EVENT_EXPOSURE = 0.25                # share of untargeted impressions / behaviours on the event category


class TimePatterns(Knob):
    def __init__(self, world):
        super().__init__(world)
        cfg = self.config
        trng = np.random.default_rng([cfg.seed, 505])
        U, C = cfg.n_users, cfg.n_categories
        slots = np.array([8, 13, 19, 23])
        order = np.argsort(trng.random((U, len(slots))), axis=1)             # a daypart per interest rank
        rank = np.minimum(np.argsort(np.argsort(-world.affinity, axis=1), axis=1), len(slots) - 1)
        peak = (slots[np.take_along_axis(order, rank, axis=1)] + trng.integers(-1, 2, (U, C))) % 24
        day_type = trng.choice(3, (U, C), p=[0.5, 0.25, 0.25])              # 0 any, 1 weekdays, 2 weekends
        event_category = np.full(cfg.n_days, -1, dtype=np.int64)
        for start in range(int(trng.integers(0, TIME_EVENT_EVERY)), cfg.n_days, TIME_EVENT_EVERY):
            event_category[start:start + TIME_EVENT_DAYS] = trng.integers(0, C)
        self.tables = {"peak_hour": peak, "day_type": day_type, "event_category": event_category}

    # ------------------------------------------------------------------ impressions
    def draw(self, raw, targeted, rng):
        """During an event the platform promotes its category: a share of untargeted impressions."""
        if not self.config.time_events:
            return
        t, items = raw["timestamp"], raw["item"]
        event_cat = self.tables["event_category"][np.minimum(t // SECONDS_PER_DAY, self.config.n_days - 1)]
        swap = np.flatnonzero((event_cat >= 0) & ~targeted & (rng.random(len(t)) < TIME_EVENT_EXPOSURE))
        items[swap] = self.world._items_in_categories(event_cat[swap], rng)

    def terms(self, f):
        return {"time": self.term(f["user"], f["category"], f["timestamp"])}

    def interest_activation(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """How active (0..1) interest ``category`` of ``user`` (0-based ids) is at ``timestamp``:
        ``exp(2 (cos(2 pi (hour - peak) / 24) - 1))`` (about 1 within +-2 h of the peak hour, under
        0.02 twelve hours away), times 0.2 on the wrong day type; 0 off the user's interests."""
        hour = (timestamp // 3600) % 24
        weekend = ((timestamp // SECONDS_PER_DAY) % 7) >= 5
        peak, dtype = self.tables["peak_hour"][user, category], self.tables["day_type"][user, category]
        bump = np.exp(2.0 * (np.cos(2 * np.pi * (hour - peak) / 24) - 1))
        match = (dtype == 0) | ((dtype == 1) & ~weekend) | ((dtype == 2) & weekend)
        return bump * np.where(match, 1.0, 0.2) * (self.world.affinity[user, category] > 0)

    def term(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """The ``time`` logit term: ``time_interests * (2 a - 1)`` on the user's interests (a =
        :meth:`interest_activation`) plus ``time_events`` on the category of a running event."""
        cfg = self.config
        z = np.zeros(len(user))
        if cfg.time_interests:
            a = self.interest_activation(user, category, timestamp)
            z += cfg.time_interests * (2 * a - 1) * (self.world.affinity[user, category] > 0)
        if cfg.time_events:
            day = np.clip(timestamp // SECONDS_PER_DAY, 0, cfg.n_days - 1)
            z += cfg.time_events * (self.tables["event_category"][day] == category)
        return z

    # ------------------------------------------------------------------ the behaviour stream
    def session_categories(self, session, new_session, t, cats) -> np.ndarray:
        """Each behaviour session's category, drawn at its start time from the user's interests
        with weights ``affinity * exp(time_interests * (2 a - 1))``: the stream follows the clock."""
        cfg, affinity = self.config, self.world.affinity
        trng = np.random.default_rng([cfg.seed, 506])
        k = cfg.interests_per_user
        user = np.repeat(np.arange(cfg.n_users), t.shape[1])[new_session.ravel()]  # [S]
        start = t.ravel()[new_session.ravel()]
        top = np.argsort(-affinity, axis=1)[:, :k][user]                           # [S, k]
        a = self.interest_activation(np.repeat(user, k), top.ravel(), np.repeat(start, k)).reshape(-1, k)
        w = np.take_along_axis(affinity[user], top, axis=1) * np.exp(cfg.time_interests * (2 * a - 1))
        pick = (np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True) < trng.random(len(user))[:, None]).sum(axis=1)
        return top[np.arange(len(user)), np.minimum(pick, k - 1)][session]

    def event_behaviours(self, t: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """During an event, a TIME_EVENT_EXPOSURE share of everyone's behaviours is on its category."""
        cfg = self.config
        trng = np.random.default_rng([cfg.seed, 507])
        day = t // SECONDS_PER_DAY
        event = np.where((day >= 0) & (day < cfg.n_days),
                         self.tables["event_category"][np.clip(day, 0, cfg.n_days - 1)], -1)
        hit = (event >= 0) & (trng.random(len(t)) < TIME_EVENT_EXPOSURE)
        return np.where(hit, event, cats)

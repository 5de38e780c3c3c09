"""The CTR world: a simulated ad/recommendation log whose true click probabilities are known.

Every impression is (user, item, context). Its click logit is a sum of named *terms*, each a
structure a model family is built to find:

==============  =========================================================  ===================
term            what is planted                                            who can learn it
==============  =========================================================  ===================
``first``       per-field biases: user, item quality, popularity, age,     LR and everything
                city, device, category, price, hour, weekday
``interest``    user x category: each user has a few interests             FM / embeddings
``cross2``      sparse order-2 crosses: device x category, gender x price  FM, DeepFM, DCN
``cross3``      a sparse order-3 cross: age x daypart x category           DeepFM, DCN (depth >= 2)
==============  =========================================================  ===================

``p_true = sigmoid(bias + sum of terms)`` and ``label ~ Bernoulli(p_true)``, so the Bayes-optimal
(oracle) AUC and logloss of any sample are computable: no model can beat them in expectation.

Later chapters switch on more knobs (time patterns, scenario groups, behaviour sequences,
modalities, action types) through ``WorldConfig`` fields; each adds a term or a column, so one
world serves the whole book. Everything is vectorised numpy and seeded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema, Sequence

SECONDS_PER_DAY = 86_400
N_AGE, N_GENDER, N_CITY, N_DEVICE, N_PRICE, N_DAYPART = 7, 2, 30, 3, 10, 6
USER_FIELDS = ("user_id", "age", "gender", "city", "device")
ITEM_FIELDS = ("item_id", "category", "brand", "price")
CONTEXT_FIELDS = ("hour", "weekday")
TIME_EVENT_EVERY, TIME_EVENT_DAYS = 5, 3  # time-point events: one every 5 days, lasting 3 days
TIME_EVENT_EXPOSURE = 0.25                # share of untargeted impressions / behaviours on the event category


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of the world. Strengths are on the logit scale."""

    n_users: int = 5_000
    n_items: int = 2_000
    n_categories: int = 24
    n_brands: int = 300
    interests_per_user: int = 3
    n_days: int = 14
    base_ctr: float = 0.15          # mean true click probability (the bias is solved for it)
    targeting: float = 0.5          # share of impressions served from the user's interests
    item_zipf: float = 1.05         # long-tail item popularity
    user_zipf: float = 0.6          # some users are far more active than others
    first_order: float = 0.35       # scale of the per-field biases
    interest: float = 1.5           # user x category
    cross2: float = 1.0             # order-2 planted crosses
    cross2_density: float = 0.5     # share of the last field's values on which a cross is active
    cross3: float = 1.5             # order-3 planted cross
    cross3_density: float = 0.5
    history_len: int = 0            # > 0 adds each user's past clicks as sequence features
    action_types: bool = False      # True enables action_sequences(): skip/click/like/convert per exposure
    action_momentum: float = 1.5    # strength of the state term: recent actions on a category drive the next
    action_decay_hours: float = 12.0  # half-life of that state (time gaps matter)
    # Multi-interest, time-ordered histories (off by default). With history_match > 0 every user
    # has a stream of behaviours in sessions, each session on one of the user's interests; an
    # impression's history is the user's last history_len behaviours strictly before it, and the
    # logit gains history_match * (share of that history in the candidate's category).
    history_match: float = 0.0
    behaviours_per_day: float = 8.0  # behaviour-stream rate per user (with history_match > 0)
    session_len: float = 6.0         # mean behaviours per interest session
    scenario_groups: int = 0        # > 0: users fall into this many Zipf-sized groups (a ``scenario``
                                    # column) whose click functions differ (the ``scenario`` term)
    scenario_strength: float = 1.0  # scale of the group-specific weights and crosses
    scenario_zipf: float = 1.0      # group sizes ~ 1 / rank**zipf: a few big groups, several small ones
    # Time-patterned interests (the TLSI chapter), off by default. time_interests > 0: each interest
    # of a user activates on an hour-of-day x day-type pattern (a ``time`` logit term; with
    # history_match > 0 the behaviour stream follows the same pattern); time_events > 0: dated
    # events boost one category for everyone for a few days (clicks, exposure and behaviours).
    time_interests: float = 0.0
    time_events: float = 0.0
    request_size: int = 1           # > 1: impressions come in requests (one user, one time, this many items)
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Impossible knobs fail here, naming the field, instead of later inside numpy."""
        def field(name, *bounds, **kw):
            check = C.integer if isinstance(getattr(type(self), name), int) else C.real
            check(f"WorldConfig.{name}", getattr(self, name), *bounds, **kw)

        for name in ("n_users", "n_categories", "n_brands", "n_days", "request_size"):
            field(name, 1)
        field("n_items", 2, hint="item popularity is standardised over the items")
        field("interests_per_user", 1, self.n_categories, hint="a user's interests are distinct categories")
        for name in ("history_len", "scenario_groups", "seed"):
            field(name, 0)
        field("base_ctr", 0, 1, low_open=True, high_open=True, hint="it is the mean true click probability")
        field("targeting", 0, 1, hint="it is a share of impressions")
        for name in ("cross2_density", "cross3_density"):
            field(name, 0, 1, low_open=True, hint="it is the share of values on which the cross is active")
        for name in ("item_zipf", "user_zipf", "scenario_zipf"):
            field(name, 0, hint="0 is uniform, larger is more skewed")
        for name in ("first_order", "interest", "cross2", "cross3", "action_momentum", "history_match",
                     "scenario_strength", "time_interests", "time_events"):
            field(name, 0, hint="a strength is a scale on the logit scale (signs are drawn); 0 turns the term off")
        for name in ("behaviours_per_day", "action_decay_hours"):
            field(name, 0, low_open=True)
        field("session_len", 1, hint="it is the mean number of behaviours per session")
        if not isinstance(self.action_types, bool):
            raise TypeError(f"WorldConfig.action_types must be True or False, got {self.action_types!r}")
        if self.history_match and not self.history_len:
            raise ValueError("WorldConfig.history_match > 0 needs history_len > 0 (the history the click depends on)")


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities proportional to 1 / rank**a, assigned to ids in random order."""
    w = 1.0 / np.arange(1, n + 1) ** a
    return rng.permutation(w / w.sum())


def _sign_cross(sizes, active_last: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A pure order-k cross: ``scale * s_1[x_1] * ... * s_k[x_k]`` with balanced random signs s_j.
    It is active on an even number (about an ``active_last`` share) of the last field's values,
    whose signs are balanced too; inactive values have s_k = 0.

    Balanced signs make the lower-order marginals zero: averaged over any field with an even
    number of values the cross vanishes (nearly so for an odd number), so a model of lower order
    cannot pick it up; a model of order >= k can.
    """
    *first, last = sizes
    signs = [rng.permutation(np.resize([1.0, -1.0], n)) for n in first]
    n_active = max(2, 2 * round(active_last * last / 2))
    last_sign = np.zeros(last)
    last_sign[rng.choice(last, n_active, replace=False)] = rng.permutation(np.resize([1.0, -1.0], n_active))
    table = scale * signs[0]
    for s in [*signs[1:], last_sign]:
        table = np.multiply.outer(table, s)
    return table


def _sample_from_rows(cdf: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row index in ``rows``, draw a column from that row's cumulative distribution."""
    r = rng.random(len(rows))[:, None]
    return np.minimum((cdf[rows] < r).sum(axis=1), cdf.shape[1] - 1)


class CTRWorld:
    """A seeded world of users, items and planted click structure.

    >>> world = CTRWorld(WorldConfig(seed=0))
    >>> df = world.sample(100_000, seed=1)   # features, label, true_p, per-term logits
    >>> schema = world.schema()
    """

    def __init__(self, config: WorldConfig | None = None, **overrides):
        cfg = config or WorldConfig()
        if overrides:
            cfg = WorldConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        rng = np.random.default_rng(cfg.seed)
        U, I, C = cfg.n_users, cfg.n_items, cfg.n_categories
        if cfg.interests_per_user > C:
            raise ValueError(f"interests_per_user ({cfg.interests_per_user}) exceeds n_categories ({C})")

        # Users: demographics, activity, and a few interests whose choice depends on demographics.
        self.user_age = rng.integers(0, N_AGE, U)
        self.user_gender = rng.integers(0, N_GENDER, U)
        self.user_city = np.minimum(rng.zipf(1.6, U) - 1, N_CITY - 1)
        self.user_device = rng.choice(N_DEVICE, U, p=[0.45, 0.4, 0.15])
        self.user_activity = _zipf_weights(U, cfg.user_zipf, rng)
        demo_prior = rng.dirichlet(np.full(C, 0.7), size=(N_GENDER, N_AGE))  # [2, 7, C]
        self.affinity = np.zeros((U, C))  # interest weights; rows sum to 1 over k categories
        prior = demo_prior[self.user_gender, self.user_age]  # [U, C]
        keys = np.log(rng.random((U, C))) / prior  # Efraimidis-Spirakis: weighted draws w/o replacement
        chosen = np.argsort(-keys, axis=1)[:, :cfg.interests_per_user]
        np.put_along_axis(self.affinity, chosen,
                          rng.dirichlet(np.ones(cfg.interests_per_user), size=U), axis=1)

        # Items: category, brand (brands belong to one category), price, popularity, quality.
        self.item_category = rng.integers(0, C, I)
        brand_category = rng.integers(0, C, cfg.n_brands)
        self.item_brand = np.empty(I, dtype=np.int64)
        for c in range(C):  # pick each item's brand among its category's brands
            brands = np.flatnonzero(brand_category == c)
            brands = brands if len(brands) else np.array([c % cfg.n_brands])
            members = np.flatnonzero(self.item_category == c)
            self.item_brand[members] = rng.choice(brands, len(members))
        self.item_price = rng.integers(0, N_PRICE, I)
        self.item_popularity = _zipf_weights(I, cfg.item_zipf, rng)
        pop_log = np.log(self.item_popularity)
        self.item_pop_z = (pop_log - pop_log.mean()) / pop_log.std()

        # Planted click structure (logit scale).
        s = cfg.first_order
        self.w = {
            "user": rng.normal(0, 0.5 * s, U), "item": rng.normal(0, 0.5 * s, I),
            "popularity": 0.5 * s, "age": rng.normal(0, s, N_AGE), "city": rng.normal(0, 0.5 * s, N_CITY),
            "device": rng.normal(0, s, N_DEVICE), "category": rng.normal(0, s, C),
            "price": np.linspace(0.5, -0.5, N_PRICE) * s, "hour": 0.5 * s * np.sin(np.arange(24) / 24 * 2 * np.pi),
            "weekday": rng.normal(0, 0.3 * s, 7),
        }
        self.cross2_device_category = _sign_cross((N_DEVICE, C), cfg.cross2_density, cfg.cross2, rng)
        self.cross2_gender_price = _sign_cross((N_GENDER, N_PRICE), cfg.cross2_density, cfg.cross2, rng)
        self.cross3_age_daypart_category = _sign_cross((N_AGE, N_DAYPART, C), cfg.cross3_density, cfg.cross3, rng)

        # Per-category item samplers (by popularity) for targeted impressions and histories.
        self._cat_items = [np.flatnonzero(self.item_category == c) for c in range(C)]
        self._cat_cdf = [np.cumsum(self.item_popularity[m]) / self.item_popularity[m].sum() if len(m) else None
                         for m in self._cat_items]
        self._user_interest_cdf = np.cumsum(self.affinity, axis=1)
        self._item_cdf = np.cumsum(self.item_popularity)
        self._user_cdf = np.cumsum(self.user_activity)
        if cfg.scenario_groups > 0:
            self._build_scenarios()
        self._time = self._build_time_patterns() if (cfg.time_interests or cfg.time_events) else None
        self.bias = 0.0
        self._log = None
        if cfg.history_match:  # its own generator: the default world's streams are untouched
            if cfg.history_len <= 0:
                raise ValueError("history_match needs history_len > 0 (the history the click depends on)")
            self._log = self._build_behaviour_log(np.random.default_rng([cfg.seed, 101]))
        self.bias = self._solve_bias(cfg.base_ctr)
        self._histories = self._build_histories(rng) if cfg.history_len > 0 and self._log is None else None

    def _build_scenarios(self) -> None:
        """Scenario groups (the APG chapter): each user belongs to one group; each group has its own
        weights on category, price, age and device and its own category x price and device x daypart
        crosses. Every table is centred over the groups, so averaged over groups the term vanishes: a
        model that ignores the group id sees noise, one that conditions on it can learn each group's
        function. Drawn from a separate generator, so the rest of the world is unchanged."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 401])
        G, C, s = cfg.scenario_groups, cfg.n_categories, cfg.scenario_strength
        sizes = 1.0 / np.arange(1, G + 1) ** cfg.scenario_zipf
        self.user_scenario = rng.choice(G, cfg.n_users, p=sizes / sizes.sum())  # group 0 is the largest

        def centred(*shape, scale=1.0):
            t = rng.normal(0, scale * s, (G, *shape))
            return t - t.mean(axis=0, keepdims=True)

        def rank1_cross(n_a, n_b, scale):  # per group: scale * a_g[x] * b_g[y] with random signs
            a = rng.choice([-1.0, 1.0], (G, n_a, 1))
            b = rng.choice([-1.0, 1.0], (G, 1, n_b))
            t = scale * s * a * b
            return t - t.mean(axis=0, keepdims=True)

        self.w_scenario = {
            "category": centred(C, scale=0.7), "price": centred(N_PRICE, scale=0.5),
            "age": centred(N_AGE, scale=0.5), "device": centred(N_DEVICE, scale=0.5),
            "category_price": rank1_cross(C, N_PRICE, 0.8), "device_daypart": rank1_cross(N_DEVICE, N_DAYPART, 0.6),
        }

    # ------------------------------------------------------------------ sampling
    def _items_in_categories(self, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One popularity-weighted item from each requested category (empty ones fall back globally)."""
        items = np.searchsorted(self._item_cdf, rng.random(len(cats)) * self._item_cdf[-1])
        for c in np.unique(cats):
            at = np.flatnonzero(cats == c)
            if self._cat_cdf[c] is not None:
                pick = np.searchsorted(self._cat_cdf[c], rng.random(len(at)) * self._cat_cdf[c][-1])
                items[at] = self._cat_items[c][np.minimum(pick, len(self._cat_items[c]) - 1)]
        return np.minimum(items, self.config.n_items - 1)

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Raw (0-based) users, items and times of ``n`` impressions."""
        cfg = self.config
        users = np.minimum(np.searchsorted(self._user_cdf, rng.random(n) * self._user_cdf[-1]), cfg.n_users - 1)
        # Traffic peaks in the evening: draw the hour from a day-shaped profile.
        hour_p = 1 + 0.8 * np.sin((np.arange(24) - 14) / 24 * 2 * np.pi)
        hours = rng.choice(24, n, p=hour_p / hour_p.sum())
        days = rng.integers(0, cfg.n_days, n)
        t = days * SECONDS_PER_DAY + hours * 3600 + rng.integers(0, 3600, n)
        if cfg.request_size > 1:  # a request: one user at one time sees request_size items
            lead = np.arange(n) // cfg.request_size * cfg.request_size
            users, t = users[lead], t[lead]
        targeted = rng.random(n) < cfg.targeting
        items = np.searchsorted(self._item_cdf, rng.random(n) * self._item_cdf[-1])
        cats = _sample_from_rows(self._user_interest_cdf, users[targeted], rng)
        items[targeted] = self._items_in_categories(cats, rng)
        items = np.minimum(items, cfg.n_items - 1)
        if self._time is not None and cfg.time_events:  # the platform promotes the event category
            event_cat = self._time["event_category"][np.minimum(t // SECONDS_PER_DAY, cfg.n_days - 1)]
            swap = np.flatnonzero((event_cat >= 0) & ~targeted & (rng.random(n) < TIME_EVENT_EXPOSURE))
            items[swap] = self._items_in_categories(event_cat[swap], rng)
        return {"user": users, "item": items, "timestamp": t}

    def _features(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        u, i, t = raw["user"], raw["item"], raw["timestamp"]
        hour = (t // 3600) % 24
        extra = {}
        if self._log is not None:  # the last history_len behaviours strictly before t
            from ctrlib.data.sequences import history_index
            idx = history_index(u, t, self._log["user"], self._log["timestamp"], self.config.history_len)
            cats = np.where(idx >= 0, self._log["category"][np.maximum(idx, 0)], -1)
            n = (idx >= 0).sum(axis=1)
            extra = {"hist_idx": idx,
                     "history_share": (cats == self.item_category[i][:, None]).sum(axis=1) / np.maximum(n, 1)}
        return {**extra,
            "user": u, "item": i, "timestamp": t,
            "age": self.user_age[u], "gender": self.user_gender[u], "city": self.user_city[u],
            "device": self.user_device[u], "category": self.item_category[i], "brand": self.item_brand[i],
            "price": self.item_price[i], "hour": hour, "weekday": (t // SECONDS_PER_DAY) % 7,
            "daypart": hour // 4,
            **({"scenario": self.user_scenario[u]} if self.config.scenario_groups > 0 else {}),
        }

    def logit_terms(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The named logit terms of each impression (their sum plus ``self.bias`` is the logit)."""
        w = self.w
        terms = {
            "first": (w["user"][f["user"]] + w["item"][f["item"]] + w["popularity"] * self.item_pop_z[f["item"]]
                      + w["age"][f["age"]] + w["city"][f["city"]] + w["device"][f["device"]]
                      + w["category"][f["category"]] + w["price"][f["price"]] + w["hour"][f["hour"]]
                      + w["weekday"][f["weekday"]]),
            "interest": self.config.interest * (self.affinity[f["user"], f["category"]] > 0)
                        * (0.5 + self.affinity[f["user"], f["category"]]),
            "cross2": (self.cross2_device_category[f["device"], f["category"]]
                       + self.cross2_gender_price[f["gender"], f["price"]]),
            "cross3": self.cross3_age_daypart_category[f["age"], f["daypart"], f["category"]],
            **({"history": self.config.history_match * f["history_share"]} if self._log is not None else {}),
        }
        if "scenario" in f:  # the scenario-groups knob
            g, ws = f["scenario"], self.w_scenario
            terms["scenario"] = (ws["category"][g, f["category"]] + ws["price"][g, f["price"]]
                                 + ws["age"][g, f["age"]] + ws["device"][g, f["device"]]
                                 + ws["category_price"][g, f["category"], f["price"]]
                                 + ws["device_daypart"][g, f["device"], f["daypart"]])
        if self._time is not None:  # the time-patterned-interests knob
            terms["time"] = self.time_term(f["user"], f["category"], f["timestamp"])
        return terms

    # ------------------------------------------------------------------ time patterns (TLSI)
    def _build_time_patterns(self) -> dict[str, np.ndarray]:
        """Periodic interest windows and dated events, from their own generator (seed, 505).

        Periodic: a user's interests, strongest first, peak at distinct dayparts (8, 13, 19 or 23 h
        in a random order per user, +-1 h jitter) and each has a day type: any day (50 %),
        weekdays only (25 %) or weekends only (25 %); see :meth:`interest_activation`.
        Time points: from a random offset, every TIME_EVENT_EVERY days an event boosts one random
        category for everyone for TIME_EVENT_DAYS days.
        """
        cfg = self.config
        trng = np.random.default_rng([cfg.seed, 505])
        U, C = cfg.n_users, cfg.n_categories
        slots = np.array([8, 13, 19, 23])
        order = np.argsort(trng.random((U, len(slots))), axis=1)             # a daypart per interest rank
        rank = np.minimum(np.argsort(np.argsort(-self.affinity, axis=1), axis=1), len(slots) - 1)
        peak = (slots[np.take_along_axis(order, rank, axis=1)] + trng.integers(-1, 2, (U, C))) % 24
        day_type = trng.choice(3, (U, C), p=[0.5, 0.25, 0.25])              # 0 any, 1 weekdays, 2 weekends
        event_category = np.full(cfg.n_days, -1, dtype=np.int64)
        for start in range(int(trng.integers(0, TIME_EVENT_EVERY)), cfg.n_days, TIME_EVENT_EVERY):
            event_category[start:start + TIME_EVENT_DAYS] = trng.integers(0, C)
        return {"peak_hour": peak, "day_type": day_type, "event_category": event_category}

    def interest_activation(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """How active (0..1) interest ``category`` of ``user`` (0-based ids) is at ``timestamp``:
        ``exp(2 (cos(2 pi (hour - peak) / 24) - 1))`` (about 1 within +-2 h of the peak hour, under
        0.02 twelve hours away), times 0.2 on the wrong day type; 0 off the user's interests."""
        if self._time is None:
            raise ValueError("the world has no time patterns: set time_interests or time_events")
        hour = (timestamp // 3600) % 24
        weekend = ((timestamp // SECONDS_PER_DAY) % 7) >= 5
        peak, dtype = self._time["peak_hour"][user, category], self._time["day_type"][user, category]
        bump = np.exp(2.0 * (np.cos(2 * np.pi * (hour - peak) / 24) - 1))
        match = (dtype == 0) | ((dtype == 1) & ~weekend) | ((dtype == 2) & weekend)
        return bump * np.where(match, 1.0, 0.2) * (self.affinity[user, category] > 0)

    def time_term(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """The ``time`` logit term: ``time_interests * (2 a - 1)`` on the user's interests (a =
        :meth:`interest_activation`) plus ``time_events`` on the category of a running event."""
        cfg = self.config
        z = np.zeros(len(user))
        if cfg.time_interests:
            a = self.interest_activation(user, category, timestamp)
            z += cfg.time_interests * (2 * a - 1) * (self.affinity[user, category] > 0)
        if cfg.time_events:
            day = np.clip(timestamp // SECONDS_PER_DAY, 0, cfg.n_days - 1)
            z += cfg.time_events * (self._time["event_category"][day] == category)
        return z

    def _time_patterned_categories(self, session, new_session, t, cats) -> np.ndarray:
        """Each behaviour session's category, drawn at its start time from the user's interests
        with weights ``affinity * exp(time_interests * (2 a - 1))``: the stream follows the clock."""
        cfg = self.config
        trng = np.random.default_rng([cfg.seed, 506])
        k = cfg.interests_per_user
        user = np.repeat(np.arange(cfg.n_users), t.shape[1])[new_session.ravel()]  # [S]
        start = t.ravel()[new_session.ravel()]
        top = np.argsort(-self.affinity, axis=1)[:, :k][user]                       # [S, k]
        a = self.interest_activation(np.repeat(user, k), top.ravel(), np.repeat(start, k)).reshape(-1, k)
        w = np.take_along_axis(self.affinity[user], top, axis=1) * np.exp(cfg.time_interests * (2 * a - 1))
        pick = (np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True) < trng.random(len(user))[:, None]).sum(axis=1)
        return top[np.arange(len(user)), np.minimum(pick, k - 1)][session]

    def _event_behaviours(self, t: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """During an event, a TIME_EVENT_EXPOSURE share of everyone's behaviours is on its category."""
        cfg = self.config
        trng = np.random.default_rng([cfg.seed, 507])
        day = t // SECONDS_PER_DAY
        event = np.where((day >= 0) & (day < cfg.n_days),
                         self._time["event_category"][np.clip(day, 0, cfg.n_days - 1)], -1)
        hit = (event >= 0) & (trng.random(len(t)) < TIME_EVENT_EXPOSURE)
        return np.where(hit, event, cats)

    def _solve_bias(self, target: float) -> float:
        """The bias that makes the mean true click probability equal ``target`` (Newton steps)."""
        f = self._features(self._draw(100_000, np.random.default_rng(self.config.seed + 7919)))
        z = sum(self.logit_terms(f).values())
        b = np.log(target / (1 - target)) - z.mean()
        for _ in range(20):
            p = 1 / (1 + np.exp(-(z + b)))
            b -= (p.mean() - target) / max((p * (1 - p)).mean(), 1e-9)
        return float(b)

    def _build_histories(self, rng: np.random.Generator) -> np.ndarray:
        """Each user's last ``history_len`` clicks before day 0: mostly from their interests."""
        cfg = self.config
        U, L = cfg.n_users, cfg.history_len
        rows = np.repeat(np.arange(U), L)
        cats = _sample_from_rows(self._user_interest_cdf, rows, rng)
        items = self._items_in_categories(cats, rng)
        noise = rng.random(U * L) < 0.2
        items[noise] = np.minimum(np.searchsorted(self._item_cdf, rng.random(noise.sum())), cfg.n_items - 1)
        hist = items.reshape(U, L) + 1  # ids start at 1; 0 is padding
        lengths = rng.integers(L // 4, L + 1, U)  # some users have shorter histories: left-pad
        hist[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0
        return hist

    def _build_behaviour_log(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Every user's behaviour stream, sorted by (user, time): sessions on one interest each.

        Each user has the same number of behaviours, spread uniformly over a pre-period (long
        enough to fill a history) and the n_days of impressions. A new session starts with
        probability 1 / session_len at each behaviour and picks a category from the user's
        interests; 10% of behaviours stray to a uniformly random category.
        """
        cfg = self.config
        U, C = cfg.n_users, cfg.n_categories
        pre_days = int(np.ceil(cfg.history_len / cfg.behaviours_per_day)) + 1
        M = max(1, int(round(cfg.behaviours_per_day * (cfg.n_days + pre_days))))
        t = rng.integers(-pre_days * SECONDS_PER_DAY, cfg.n_days * SECONDS_PER_DAY, (U, M))
        t.sort(axis=1)
        new_session = rng.random((U, M)) < 1 / max(cfg.session_len, 1.0)
        new_session[:, 0] = True
        session = np.cumsum(new_session.ravel()) - 1                       # global session ids
        session_user = np.repeat(np.arange(U), M)[new_session.ravel()]
        session_cat = _sample_from_rows(self._user_interest_cdf, session_user, rng)
        cats = session_cat[session]
        if self._time is not None:  # time-patterned interests: redraw from their own generator
            cats = self._time_patterned_categories(session, new_session, t, cats)
        stray = rng.random(U * M) < 0.1
        cats[stray] = rng.integers(0, C, int(stray.sum()))
        if self._time is not None and cfg.time_events:
            cats = self._event_behaviours(t.ravel(), cats)
        items = self._items_in_categories(cats, rng)
        return {"user": np.repeat(np.arange(U), M), "timestamp": t.ravel(), "item": items,
                "category": self.item_category[items]}

    def behaviour_log(self) -> pd.DataFrame:
        """The behaviour stream (``history_match > 0`` only) as a frame with model ids (1-based):
        ``user_id``, ``item_id``, ``category``, ``timestamp``; histories of any length can be built
        from it with :func:`ctrlib.data.sequences.build_behaviour_samples`."""
        if self._log is None:
            raise ValueError("this world has no behaviour stream: set history_match > 0")
        log = self._log
        return pd.DataFrame({"user_id": log["user"] + 1, "item_id": log["item"] + 1,
                             "category": log["category"] + 1, "timestamp": log["timestamp"]})

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` impressions sorted by time: model features (ids start at 1, 0 = padding), the
        sampled ``label``, and the truth: ``true_p``, ``true_logit`` and one ``z_<term>`` per term."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        rng = np.random.default_rng([self.config.seed, seed])
        f = self._features(self._draw(n, rng))
        terms = self.logit_terms(f)
        logit = self.bias + sum(terms.values())
        p = 1 / (1 + np.exp(-logit))
        label = (rng.random(n) < p).astype(np.float32)
        df = pd.DataFrame({
            "user_id": f["user"] + 1, "age": f["age"] + 1, "gender": f["gender"] + 1, "city": f["city"] + 1,
            "device": f["device"] + 1, "item_id": f["item"] + 1, "category": f["category"] + 1,
            "brand": f["brand"] + 1, "price": f["price"] + 1, "hour": f["hour"] + 1,
            "weekday": f["weekday"] + 1,
            **({"scenario": f["scenario"] + 1} if "scenario" in f else {}),
            "timestamp": f["timestamp"], "label": label,
            "true_p": p, "true_logit": logit, **{f"z_{k}": v for k, v in terms.items()},
        })
        if self._log is not None:
            idx = f["hist_idx"]
            df["hist_item_id"] = list(np.where(idx >= 0, self._log["item"][np.maximum(idx, 0)] + 1, 0))
            df["hist_category"] = list(np.where(idx >= 0, self._log["category"][np.maximum(idx, 0)] + 1, 0))
            df["hist_timestamp"] = list(np.where(idx >= 0, self._log["timestamp"][np.maximum(idx, 0)], 0))
            df["history_share"] = f["history_share"]
        if self._histories is not None:
            hist = self._histories[f["user"]]
            df["hist_item_id"] = list(hist)
            df["hist_category"] = list(np.where(hist > 0, self.item_category[np.maximum(hist - 1, 0)] + 1, 0))
        return df.sort_values("timestamp", kind="stable").reset_index(drop=True)

    # ------------------------------------------------------------------ schema
    def vocab_sizes(self) -> dict[str, int]:
        """Rows per id field: padding (0) + values + one spare out-of-vocabulary row."""
        cfg = self.config
        n = {"user_id": cfg.n_users, "age": N_AGE, "gender": N_GENDER, "city": N_CITY, "device": N_DEVICE,
             "item_id": cfg.n_items, "category": cfg.n_categories, "brand": cfg.n_brands, "price": N_PRICE,
             "hour": 24, "weekday": 7}
        if cfg.scenario_groups > 0:
            n["scenario"] = cfg.scenario_groups
        return {k: v + 2 for k, v in n.items()}

    def schema(self, fields=None, extras=("user_id",)) -> Schema:
        """The feature schema of :meth:`sample`'s frames (all fields unless ``fields`` is given).
        ``extras`` are carried in batches without being features (``user_id`` for GAUC)."""
        sizes = self.vocab_sizes()
        fields = list(sizes) if fields is None else list(fields)
        unknown = [f for f in fields if f not in sizes]
        if unknown:
            raise KeyError(f"unknown fields {unknown}; the world has {list(sizes)}")
        features: list = [Categorical(name, sizes[name]) for name in fields]
        if self._histories is not None or self._log is not None:
            L = self.config.history_len
            features += [Sequence("hist_item_id", sizes["item_id"], L, embedding="item_id"),
                         Sequence("hist_category", sizes["category"], L, embedding="category")]
        extras = tuple(e for e in extras if e not in fields)
        return Schema(tuple(features), ("label",), extras)

    # ------------------------------------------------------------------ action sequences
    ACTIONS = ("skip", "click", "like", "convert")  # action ids 1..4 (0 = padding)

    def action_sequences(self, n_users: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Chronological exposure sequences with an action per exposure (needs ``action_types=True``).

        Returns ``[n_users, length]`` arrays ``item_id``, ``category`` (ids from 1), ``action``
        (1 skip, 2 click, 3 like, 4 convert), ``timestamp`` (seconds), ``label`` (action >= click),
        ``true_p`` (the true click probability), ``p_like``, ``p_convert`` (true P(action >= like),
        P(action = convert)), plus ``user_id`` ``[n_users]``. Each user's actions are an ordinal
        draw from ``z = static + momentum * tanh(h[u, category])``: ``static`` is the world's
        impression logit (all terms, at that exposure's hour), and the state ``h[u, c]`` sums the
        values of the user's past actions on category ``c`` (skip -0.5, click +0.5, like +1,
        convert +1.5), halved every ``action_decay_hours``. So the (item, action) history carries
        signal beyond the items alone, and time gaps matter. Draws use their own random stream:
        the impression world is unchanged.
        """
        cfg = self.config
        if not cfg.action_types:
            raise ValueError("action_sequences needs WorldConfig(action_types=True)")
        if n_users <= 0 or length <= 0:
            raise ValueError(f"n_users and length must be positive, got {n_users}, {length}")
        rng = np.random.default_rng([cfg.seed, 606, seed])
        U, L, C = n_users, length, cfg.n_categories
        users = rng.choice(cfg.n_users, U, replace=n_users > cfg.n_users)
        # Sessions: short gaps (minutes) within a session, long ones (hours to days) between sessions.
        new_session = rng.random((U, L)) < 0.15
        gaps = np.where(new_session, rng.exponential(18 * 3600, (U, L)), rng.exponential(120, (U, L))) + 1
        t = (rng.integers(0, cfg.n_days * SECONDS_PER_DAY, U)[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)
        rows = np.repeat(users, L)
        targeted = rng.random(U * L) < cfg.targeting
        items = np.searchsorted(self._item_cdf, rng.random(U * L) * self._item_cdf[-1])
        items[targeted] = self._items_in_categories(_sample_from_rows(self._user_interest_cdf, rows[targeted], rng), rng)
        items = np.minimum(items, cfg.n_items - 1)
        f = self._features({"user": rows, "item": items, "timestamp": t.ravel()})
        static = sum(self.logit_terms(f).values()).reshape(U, L)
        cats = f["category"].reshape(U, L)
        # Offset so that about 30% of exposures are clicked when the state is neutral.
        offset = np.log(0.3 / 0.7) - np.median(static)
        value = np.array([0.0, -0.5, 0.5, 1.0, 1.5])  # by action id
        h = np.zeros((U, C))
        last_t = t[:, 0].astype(np.float64)
        half_life = cfg.action_decay_hours * 3600
        out = {k: np.zeros((U, L)) for k in ("true_p", "p_like", "p_convert")}
        action = np.zeros((U, L), dtype=np.int64)
        ar = np.arange(U)
        for s in range(L):
            h *= 0.5 ** ((t[:, s] - last_t) / half_life)[:, None]
            last_t = t[:, s].astype(np.float64)
            z = offset + static[:, s] + cfg.action_momentum * np.tanh(h[ar, cats[:, s]])
            p_click = 1 / (1 + np.exp(-z))
            p_like = p_click / (1 + np.exp(-(z - 1.0)))       # P(>= like) = P(click) P(like | click)
            p_conv = p_like / (1 + np.exp(-(z - 1.5)))         # P(convert) = P(>= like) P(convert | like)
            r = rng.random(U)
            a = 1 + (r < p_click) + (r < p_like) + (r < p_conv)
            action[:, s] = a
            out["true_p"][:, s], out["p_like"][:, s], out["p_convert"][:, s] = p_click, p_like, p_conv
            h[ar, cats[:, s]] += value[a]
        return {"user_id": users + 1, "item_id": items.reshape(U, L) + 1, "category": cats + 1,
                "action": action, "timestamp": t, "label": (action >= 2).astype(np.float32), **out}

    def oracle(self, df: pd.DataFrame) -> dict[str, float]:
        """The Bayes-optimal metrics on ``df``: AUC and logloss of the true probabilities."""
        from ctrlib.metrics import oracle_metrics
        return oracle_metrics(df)

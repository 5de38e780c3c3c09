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

Later chapters switch on more knobs through ``WorldConfig`` fields; each adds a term or a column,
so one world serves the whole book. Each knob lives in its own module of :mod:`ctrlib.data.world`
(its docstring says what it plants and its oracle term):

=======================================  ===============================  ==========================
knob (``WorldConfig``)                   module                           oracle term
=======================================  ===============================  ==========================
``history_len``, ``history_match``       ``world/histories.py``           ``history``
``scenario_groups``                      ``world/scenarios.py``           ``scenario``
``time_interests``, ``time_events``      ``world/time_patterns.py``       ``time``
``action_types``                         ``world/actions.py``             its own action sequences
=======================================  ===============================  ==========================

Everything is vectorised numpy and seeded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema
from ctrlib.data.world.actions import ACTIONS, action_sequences
from ctrlib.data.world.base import (N_AGE, N_CITY, N_DAYPART, N_DEVICE, N_GENDER, N_PRICE, SECONDS_PER_DAY,
                                    sample_from_rows)
from ctrlib.data.world.histories import BehaviourStream, StaticHistories
from ctrlib.data.world.scenarios import ScenarioGroups
from ctrlib.data.world.time_patterns import TimePatterns

USER_FIELDS = ("user_id", "age", "gender", "city", "device")
ITEM_FIELDS = ("item_id", "category", "brand", "price")
CONTEXT_FIELDS = ("hour", "weekday")


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
        # The knobs (ctrlib.data.world), each from its own generator; built in this order because
        # the behaviour stream follows the time patterns. self.knobs lists them in logit-term order.
        self.scenarios = ScenarioGroups(self) if cfg.scenario_groups > 0 else None
        self.time_patterns = TimePatterns(self) if (cfg.time_interests or cfg.time_events) else None
        self.stream = BehaviourStream(self, self.time_patterns) if cfg.history_match else None
        self.knobs = [k for k in (self.stream, self.scenarios, self.time_patterns) if k is not None]
        self.bias = self._solve_bias(cfg.base_ctr)
        if cfg.history_len > 0 and self.stream is None:  # static histories: the main generator, last
            self.knobs.append(StaticHistories(self, rng))

    # ------------------------------------------------------------------ the knobs' tables
    @property
    def user_scenario(self) -> np.ndarray:
        """Each user's scenario group (0-based), ``scenario_groups > 0`` only."""
        return self.scenarios.user_group

    @property
    def w_scenario(self) -> dict[str, np.ndarray]:
        """The scenario groups' weight and cross tables, ``[G, ...]`` each."""
        return self.scenarios.weights

    @property
    def _time(self) -> dict[str, np.ndarray] | None:
        return self.time_patterns.tables if self.time_patterns is not None else None

    @property
    def _log(self) -> dict[str, np.ndarray] | None:
        return self.stream.log if self.stream is not None else None

    def interest_activation(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """See :meth:`ctrlib.data.world.time_patterns.TimePatterns.interest_activation`."""
        if self.time_patterns is None:
            raise ValueError("the world has no time patterns: set time_interests or time_events")
        return self.time_patterns.interest_activation(user, category, timestamp)

    def time_term(self, user: np.ndarray, category: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """See :meth:`ctrlib.data.world.time_patterns.TimePatterns.term`."""
        if self.time_patterns is None:
            raise ValueError("the world has no time patterns: set time_interests or time_events")
        return self.time_patterns.term(user, category, timestamp)

    def behaviour_log(self) -> pd.DataFrame:
        """The behaviour stream (``history_match > 0`` only) as a frame with model ids (1-based):
        ``user_id``, ``item_id``, ``category``, ``timestamp``; histories of any length can be built
        from it with :func:`ctrlib.data.sequences.build_behaviour_samples`."""
        if self.stream is None:
            raise ValueError("this world has no behaviour stream: set history_match > 0")
        return self.stream.frame()

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
        cats = sample_from_rows(self._user_interest_cdf, users[targeted], rng)
        items[targeted] = self._items_in_categories(cats, rng)
        raw = {"user": users, "item": np.minimum(items, cfg.n_items - 1), "timestamp": t}
        for knob in self.knobs:
            knob.draw(raw, targeted, rng)
        return raw

    def _features(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The 0-based features of raw impressions: the core fields, then each knob's."""
        u, i, t = raw["user"], raw["item"], raw["timestamp"]
        hour = (t // 3600) % 24
        f = {"user": u, "item": i, "timestamp": t,
             "age": self.user_age[u], "gender": self.user_gender[u], "city": self.user_city[u],
             "device": self.user_device[u], "category": self.item_category[i], "brand": self.item_brand[i],
             "price": self.item_price[i], "hour": hour, "weekday": (t // SECONDS_PER_DAY) % 7, "daypart": hour // 4}
        for knob in self.knobs:
            f.update(knob.features(f))
        return f

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
        }
        for knob in self.knobs:
            terms.update(knob.terms(f))
        return terms

    def _solve_bias(self, target: float) -> float:
        """The bias that makes the mean true click probability equal ``target`` (Newton steps)."""
        f = self._features(self._draw(100_000, np.random.default_rng(self.config.seed + 7919)))
        z = sum(self.logit_terms(f).values())
        b = np.log(target / (1 - target)) - z.mean()
        for _ in range(20):
            p = 1 / (1 + np.exp(-(z + b)))
            b -= (p.mean() - target) / max((p * (1 - p)).mean(), 1e-9)
        return float(b)

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
            **{k: v for knob in self.knobs for k, v in knob.id_columns(f).items()},
            "timestamp": f["timestamp"], "label": label,
            "true_p": p, "true_logit": logit, **{f"z_{k}": v for k, v in terms.items()},
        })
        for knob in self.knobs:
            for name, values in knob.sequence_columns(f).items():
                df[name] = values
        return df.sort_values("timestamp", kind="stable").reset_index(drop=True)

    # ------------------------------------------------------------------ schema
    def vocab_sizes(self) -> dict[str, int]:
        """Rows per id field: padding (0) + values + one spare out-of-vocabulary row."""
        cfg = self.config
        n = {"user_id": cfg.n_users, "age": N_AGE, "gender": N_GENDER, "city": N_CITY, "device": N_DEVICE,
             "item_id": cfg.n_items, "category": cfg.n_categories, "brand": cfg.n_brands, "price": N_PRICE,
             "hour": 24, "weekday": 7}
        for knob in self.knobs:
            n.update(knob.vocab_sizes())
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
        for knob in self.knobs:
            features += knob.sequences()
        extras = tuple(e for e in extras if e not in fields)
        return Schema(tuple(features), ("label",), extras)

    # ------------------------------------------------------------------ action sequences
    ACTIONS = ACTIONS  # action ids 1..4 (0 = padding)

    def action_sequences(self, n_users: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Exposure sequences with an action per exposure (``action_types=True``): see
        :func:`ctrlib.data.world.actions.action_sequences`."""
        return action_sequences(self, n_users, length, seed)

    def oracle(self, df: pd.DataFrame) -> dict[str, float]:
        """The Bayes-optimal metrics on ``df``: AUC and logloss of the true probabilities."""
        from ctrlib.metrics import oracle_metrics
        return oracle_metrics(df)

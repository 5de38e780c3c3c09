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

from ctrlib.data.schema import Categorical, Schema, Sequence

SECONDS_PER_DAY = 86_400
N_AGE, N_GENDER, N_CITY, N_DEVICE, N_PRICE, N_DAYPART = 7, 2, 30, 3, 10, 6
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
    seed: int = 0


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
        self.bias = 0.0
        self.bias = self._solve_bias(cfg.base_ctr)
        self._histories = self._build_histories(rng) if cfg.history_len > 0 else None

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
        targeted = rng.random(n) < cfg.targeting
        items = np.searchsorted(self._item_cdf, rng.random(n) * self._item_cdf[-1])
        cats = _sample_from_rows(self._user_interest_cdf, users[targeted], rng)
        items[targeted] = self._items_in_categories(cats, rng)
        items = np.minimum(items, cfg.n_items - 1)
        return {"user": users, "item": items, "timestamp": t}

    def _features(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        u, i, t = raw["user"], raw["item"], raw["timestamp"]
        hour = (t // 3600) % 24
        return {
            "user": u, "item": i, "timestamp": t,
            "age": self.user_age[u], "gender": self.user_gender[u], "city": self.user_city[u],
            "device": self.user_device[u], "category": self.item_category[i], "brand": self.item_brand[i],
            "price": self.item_price[i], "hour": hour, "weekday": (t // SECONDS_PER_DAY) % 7,
            "daypart": hour // 4,
        }

    def logit_terms(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The named logit terms of each impression (their sum plus ``self.bias`` is the logit)."""
        w = self.w
        return {
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
            "weekday": f["weekday"] + 1, "timestamp": f["timestamp"], "label": label,
            "true_p": p, "true_logit": logit, **{f"z_{k}": v for k, v in terms.items()},
        })
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
        if self._histories is not None:
            L = self.config.history_len
            features += [Sequence("hist_item_id", sizes["item_id"], L, embedding="item_id"),
                         Sequence("hist_category", sizes["category"], L, embedding="category")]
        extras = tuple(e for e in extras if e not in fields)
        return Schema(tuple(features), ("label",), extras)

    def oracle(self, df: pd.DataFrame) -> dict[str, float]:
        """The Bayes-optimal metrics on ``df``: AUC and logloss of the true probabilities."""
        from ctrlib.metrics import oracle_metrics
        return oracle_metrics(df)

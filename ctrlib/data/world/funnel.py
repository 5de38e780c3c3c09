"""The conversion funnel (the DHEN-for-CVR chapter): impressions of ads with three nested tasks,
click -> add-to-cart -> checkout (about 5% / 1% / 0.3% of impressions), an on-site behaviour
sequence and an off-site conversion sequence per impression, and the true probability of every task.

A world of its own (:class:`ConversionFunnel`), not a ``WorldConfig`` knob: the funnel's entities
(advertisers owning items, users' off-site conversions) are not in the core world. Its draws come
from its own generators, so the core world's numbers are untouched.

Entities. Each category c has a latent vector g_c; an item belongs to one advertiser, which belongs
to one category; the item's latent vector is v_i = g_c + noise and it has a price bucket (0..9).
A user has a latent vector u, interests ``softmax(3 <u, g_c>)`` over categories, a segment (0..4)
that sets the price sensitivity s, and a conversion propensity q.

An impression: a user (uniform), an item (40% from the user's interests, 20% retargeting an
advertiser of the user's off-site sequence, the rest by popularity), a device (3), a placement (4)
and a daypart (6). Its sequences are drawn per impression:

* on-site (``onsite_len`` items, chronological): a session walk over the user's interests, each next
  item in the same category as the previous one with probability 0.7 (so the next action is
  predictable from the past: what the next-action loss learns);
* off-site (up to ``offsite_len`` advertisers the user converted with, left-padded, often empty):
  Binomial(offsite_len, q) events, 70% on advertisers of the user's interests.

Oracle. With first-order terms f_t (user, item, device, placement and price biases, always on) and
the planted interactions (``interactions=True``; the control world sets all of them to zero):

    dot      = dot_strength * <u, v_i>                                  (a product of embeddings: DLRM)
    cross    = cross_strength * (s[segment] * price_z + T[device, placement])   (bit-level: DCN)
    onsite   = onsite_strength * 1.5 * (share of the on-site sequence in the item's category - 1/C)
    offsite  = offsite_strength * [the item's advertiser is in the off-site sequence]

    z_click    = b_1 + f_1 + dot + T-part of cross + onsite
    z_cart     = b_2 + f_2 + dot + s-part of cross + 0.3 offsite
    z_checkout = b_3 + f_3 + 0.5 dot + s-part of cross + offsite
    p_click = sigmoid(z_click),  p_cart = p_click sigmoid(z_cart),  p_checkout = p_cart sigmoid(z_checkout)

The offsets b_t are set (by bisection, on a calibration draw made when the world is built) so that
the mean probabilities hit ``click_rate``, ``cart_rate`` and ``checkout_rate``. One uniform r per
impression gives the nested labels click = r < p_click, cart = r < p_cart, checkout = r < p_checkout.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema, Sequence

TASKS = ("click", "cart", "checkout")          # the funnel, widest first
TRUTH = {t: f"p_{t}" for t in TASKS}           # the true probability column of each task
N_SEGMENT, N_DEVICE, N_PLACEMENT, N_DAYPART, N_PRICE = 5, 3, 4, 6, 10
FIELDS = ("user_id", "item_id", "advertiser_id", "category", "price", "segment", "device", "placement",
          "daypart")
SEQUENCES = ("onsite_items", "offsite_advertisers")


@dataclass(frozen=True)
class FunnelConfig:
    n_users: int = 3000
    n_items: int = 600
    n_advertisers: int = 60
    n_categories: int = 12
    latent_dim: int = 4
    onsite_len: int = 10
    offsite_len: int = 5
    click_rate: float = 0.05
    cart_rate: float = 0.01
    checkout_rate: float = 0.003
    interactions: bool = True      # False: the control world, every planted interaction is zero
    dot_strength: float = 1.0
    cross_strength: float = 1.0
    onsite_strength: float = 1.0
    offsite_strength: float = 2.0
    seed: int = 0

    def __post_init__(self):
        for name in ("n_users", "n_items", "n_advertisers", "n_categories", "latent_dim", "onsite_len",
                     "offsite_len"):
            C.integer(name, getattr(self, name), 1)
        if not self.n_categories <= self.n_advertisers <= self.n_items:
            raise ValueError(f"need n_categories <= n_advertisers <= n_items (each category has an advertiser, "
                             f"each advertiser an item), got {self.n_categories}, {self.n_advertisers}, "
                             f"{self.n_items}")
        if not 0 < self.checkout_rate < self.cart_rate < self.click_rate < 1:
            raise ValueError(f"a funnel narrows: need 0 < checkout_rate < cart_rate < click_rate < 1, got "
                             f"{self.checkout_rate}, {self.cart_rate}, {self.click_rate}")
        for name in ("dot_strength", "cross_strength", "onsite_strength", "offsite_strength"):
            C.real(name, getattr(self, name), 0)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class ConversionFunnel:
    """``ConversionFunnel(checkout_rate=0.003, interactions=False)``; :meth:`sample` draws impressions."""

    def __init__(self, config: FunnelConfig | None = None, **overrides):
        self.config = cfg = dataclasses.replace(config or FunnelConfig(), **overrides)
        rng = np.random.default_rng([cfg.seed, 707])
        U, I, A, K, k = cfg.n_users, cfg.n_items, cfg.n_advertisers, cfg.n_categories, cfg.latent_dim
        self.category_latent = rng.normal(0, 1, (K, k)) / np.sqrt(k)
        self.advertiser_category = np.r_[np.arange(K), rng.integers(0, K, A - K)]  # every category has one
        self.item_advertiser = np.r_[np.arange(A), rng.integers(0, A, I - A)]
        self.item_category = self.advertiser_category[self.item_advertiser]
        self.item_latent = self.category_latent[self.item_category] + rng.normal(0, 0.5, (I, k)) / np.sqrt(k)
        self.item_price = rng.integers(0, N_PRICE, I)
        self.item_popularity = rng.pareto(1.5, I) + 1
        self.user_latent = rng.normal(0, 1, (U, k)) / np.sqrt(k)
        logits = 3 * self.user_latent @ self.category_latent.T                       # [U, K]
        interest = np.exp(logits - logits.max(1, keepdims=True))
        self.user_interest = interest / interest.sum(1, keepdims=True)
        self.user_segment = rng.integers(0, N_SEGMENT, U)
        self.user_propensity = rng.beta(1.2, 3.0, U)
        self.segment_sensitivity = np.linspace(-1.0, 1.0, N_SEGMENT)                 # s[segment]
        cross = rng.choice([-1.0, 1.0], (N_DEVICE, 1)) * rng.choice([-1.0, 1.0], (1, N_PLACEMENT)) * 0.8
        self.device_placement = cross - cross.mean()                                # T[device, placement]
        self.bias = {t: {"user": rng.normal(0, 0.3, U), "item": rng.normal(0, 0.4, I),
                         "device": rng.normal(0, 0.2, N_DEVICE), "placement": rng.normal(0, 0.3, N_PLACEMENT),
                         "price": -0.1 * (t != "click")} for t in TASKS}
        self.offsets = self._calibrate()

    # ------------------------------------------------------------------ drawing impressions
    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg = self.config
        U, I, K, A = cfg.n_users, cfg.n_items, cfg.n_categories, cfg.n_advertisers
        user = rng.integers(0, U, n)
        # off-site conversions: Binomial(offsite_len, q) advertisers, 70% from the user's interests
        n_off = rng.binomial(cfg.offsite_len, self.user_propensity[user])
        interest_cdf = np.cumsum(self.user_interest[user], axis=1)                     # [n, K]
        off_cat = (interest_cdf[:, None, :] < rng.random((n, cfg.offsite_len, 1))).sum(-1).clip(max=K - 1)
        off_adv = self._advertiser_in(off_cat, rng)
        off_adv = np.where(rng.random(off_adv.shape) < 0.7, off_adv, rng.integers(0, A, off_adv.shape))
        present = np.arange(cfg.offsite_len)[None, :] >= cfg.offsite_len - n_off[:, None]  # left padding
        offsite = np.where(present, off_adv + 1, 0)                                  # [n, L_off], 0 = padding
        # on-site session walk: the next category is the previous one with probability 0.7
        L = cfg.onsite_len
        walk = np.empty((n, L), dtype=np.int64)
        for t in range(L):
            fresh = (interest_cdf < rng.random((n, 1))).sum(1).clip(max=K - 1)
            walk[:, t] = fresh if t == 0 else np.where(rng.random(n) < 0.7, walk[:, t - 1], fresh)
        onsite_items = self._item_in(walk, rng)
        # the candidate item: 40% interest-targeted, 20% retargeting an off-site advertiser, else popularity
        pop_cdf = np.cumsum(self.item_popularity) / self.item_popularity.sum()
        item = np.searchsorted(pop_cdf, rng.random(n)).clip(max=I - 1)
        mode = rng.random(n)
        targeted = mode < 0.4
        cat = (interest_cdf[targeted] < rng.random((targeted.sum(), 1))).sum(1).clip(max=K - 1)
        item[targeted] = self._item_in(cat, rng)
        retarget = (mode >= 0.4) & (mode < 0.6) & (n_off > 0)
        pick = cfg.offsite_len - 1 - rng.integers(0, np.maximum(n_off[retarget], 1))
        item[retarget] = self._item_of(offsite[retarget, pick] - 1, rng)
        return {"user": user, "item": item, "device": rng.integers(0, N_DEVICE, n),
                "placement": rng.integers(0, N_PLACEMENT, n), "daypart": rng.integers(0, N_DAYPART, n),
                "onsite": onsite_items, "offsite": offsite}

    def _advertiser_in(self, cats: np.ndarray, rng) -> np.ndarray:
        """A uniform advertiser of each category in ``cats`` (any shape)."""
        order = np.argsort(self.advertiser_category, kind="stable")
        counts = np.bincount(self.advertiser_category, minlength=self.config.n_categories)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        return order[starts[cats] + (rng.random(cats.shape) * counts[cats]).astype(np.int64)]

    def _item_of(self, advertisers: np.ndarray, rng) -> np.ndarray:
        """A uniform item of each advertiser in ``advertisers`` (any shape)."""
        order = np.argsort(self.item_advertiser, kind="stable")
        counts = np.bincount(self.item_advertiser, minlength=self.config.n_advertisers)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        return order[starts[advertisers] + (rng.random(advertisers.shape) * counts[advertisers]).astype(np.int64)]

    def _item_in(self, cats: np.ndarray, rng) -> np.ndarray:
        return self._item_of(self._advertiser_in(cats, rng), rng)

    # ------------------------------------------------------------------ the oracle
    def logit_terms(self, d: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Per task, the named logit terms (without the offset) of draws ``d`` (see the module docstring)."""
        cfg = self.config
        u, i = d["user"], d["item"]
        on = cfg.interactions
        price_z = (self.item_price[i] - (N_PRICE - 1) / 2) / 3
        share = (self.item_category[d["onsite"]] == self.item_category[i][:, None]).mean(1)
        in_offsite = (d["offsite"] == self.item_advertiser[i][:, None] + 1).any(1).astype(np.float64)
        dot = on * cfg.dot_strength * (self.user_latent[u] * self.item_latent[i]).sum(1)
        price_cross = on * cfg.cross_strength * self.segment_sensitivity[self.user_segment[u]] * price_z
        dp_cross = on * cfg.cross_strength * self.device_placement[d["device"], d["placement"]]
        onsite = on * cfg.onsite_strength * 1.5 * (share - 1 / cfg.n_categories)
        offsite = on * cfg.offsite_strength * in_offsite
        out = {}
        for t in TASKS:
            b = self.bias[t]
            first = b["user"][u] + b["item"][i] + b["device"][d["device"]] + b["placement"][d["placement"]] \
                + b["price"] * price_z
            out[t] = {"first": first}
        out["click"].update(dot=dot, cross=dp_cross, onsite=onsite)
        out["cart"].update(dot=dot, cross=price_cross, offsite=0.3 * offsite)
        out["checkout"].update(dot=0.5 * dot, cross=price_cross, offsite=offsite)
        return out

    def probabilities(self, d, offsets=None) -> dict[str, np.ndarray]:
        """The true p_click, p_cart, p_checkout of draws ``d`` (nested: each stage times the next)."""
        offsets = self.offsets if offsets is None else offsets
        terms = self.logit_terms(d)
        p, out = 1.0, {}
        for t in TASKS:
            p = p * _sigmoid(offsets[t] + sum(terms[t].values()))
            out[t] = p
        return out

    def _calibrate(self) -> dict[str, float]:
        """Offsets b_t that put the mean probabilities at the configured rates, task by task."""
        cfg = self.config
        d = self._draw(50_000, np.random.default_rng([cfg.seed, 708]))
        terms = self.logit_terms(d)
        targets = {"click": cfg.click_rate, "cart": cfg.cart_rate, "checkout": cfg.checkout_rate}
        offsets, upstream = {}, 1.0
        for t in TASKS:
            z = sum(terms[t].values())
            lo, hi = -30.0, 30.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if (upstream * _sigmoid(mid + z)).mean() < targets[t] else (lo, mid)
            offsets[t] = (lo + hi) / 2
            upstream = upstream * _sigmoid(offsets[t] + z)
        return offsets

    # ------------------------------------------------------------------ the public API
    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` impressions: the id columns of :data:`FIELDS` (from 1), the sequences of
        :data:`SEQUENCES` (arrays, 0 = padding), the nested 0/1 labels of :data:`TASKS` and the
        true probabilities ``p_click``, ``p_cart``, ``p_checkout``."""
        C.integer("n", n, 1)
        rng = np.random.default_rng([self.config.seed, 709, seed])
        d = self._draw(n, rng)
        p = self.probabilities(d)
        r = rng.random(n)
        u, i = d["user"], d["item"]
        df = pd.DataFrame({
            "user_id": u + 1, "item_id": i + 1, "advertiser_id": self.item_advertiser[i] + 1,
            "category": self.item_category[i] + 1, "price": self.item_price[i] + 1,
            "segment": self.user_segment[u] + 1, "device": d["device"] + 1, "placement": d["placement"] + 1,
            "daypart": d["daypart"] + 1,
            "onsite_items": list(d["onsite"] + 1), "offsite_advertisers": list(d["offsite"]),
        })
        for t in TASKS:
            df[t] = (r < p[t]).astype(np.float32)
            df[TRUTH[t]] = p[t]
        df["offsite_match"] = (d["offsite"] == self.item_advertiser[i][:, None] + 1).any(1)
        return df

    def vocab_sizes(self) -> dict[str, int]:
        """Rows of each id table: padding 0, the values from 1, and one out-of-vocabulary row."""
        cfg = self.config
        n = {"user_id": cfg.n_users, "item_id": cfg.n_items, "advertiser_id": cfg.n_advertisers,
             "category": cfg.n_categories, "price": N_PRICE, "segment": N_SEGMENT, "device": N_DEVICE,
             "placement": N_PLACEMENT, "daypart": N_DAYPART}
        return {k: v + 2 for k, v in n.items()}

    def schema(self, labels=TASKS, sequences=SEQUENCES) -> Schema:
        """The schema of :meth:`sample`'s columns: the fields, the chosen ``sequences`` (the on-site
        items share the ``item_id`` table, the off-site advertisers the ``advertiser_id`` one) and
        the chosen task ``labels``."""
        labels = tuple(labels)
        unknown = [t for t in labels if t not in TASKS] + [s for s in sequences if s not in SEQUENCES]
        if unknown or not labels:
            raise ValueError(f"unknown labels or sequences {unknown} (labels: {TASKS}, sequences: {SEQUENCES})")
        sizes = self.vocab_sizes()
        feats = [Categorical(f, sizes[f]) for f in FIELDS]
        if "onsite_items" in sequences:
            feats.append(Sequence("onsite_items", sizes["item_id"], self.config.onsite_len, embedding="item_id"))
        if "offsite_advertisers" in sequences:
            feats.append(Sequence("offsite_advertisers", sizes["advertiser_id"], self.config.offsite_len,
                                  embedding="advertiser_id"))
        return Schema(tuple(feats), labels)

"""Multi-modal items and cross-modal synergy (the Diff-MSIN chapter): :class:`SynergyWorld`.

Every item has three discrete attributes: a **text-only** one ``a_text`` (e.g. a material named in
the title), an **image-only** one ``a_image`` (e.g. a shape seen in the picture) and a **shared**
one ``a_shared`` that shows in both views (e.g. a colour, written and seen). Its two modal vectors
are built from them (``[I, modal_dim]`` each, plus a padding row):

    text_i  = A_text  [onehot(a_text_i);  onehot(a_shared_i)] + noise * N(0, I)
    image_i = A_image [onehot(a_image_i); onehot(a_shared_i)] + noise * N(0, I)

with random projections ``A_text``, ``A_image``: the shared factor is the common part of the two
views, the others are private. Each user prefers one value of each attribute (``u_text``,
``u_image``, ``u_shared``); their history holds ``history_len`` items drawn with each preferred
attribute at rate ``history_focus``. An impression's logit (``mode="synergy"``):

    z = bias + b_user + b_item + synergy * m_text * m_image + additive * (m_text + m_image) + shared * m_shared

with ``m_x = 1[candidate's a_x == user's u_x]``: the big term needs the **conjunction** of a text
match and an image match. ``mode="additive"`` is the negative control: the same world with
``z = ... + (synergy / 2 + additive) * (m_text + m_image) + ...`` (no conjunction; the same logit
when both match). ``true_p = sigmoid(z)`` is exact, so :meth:`SynergyWorld.oracle` is the
Bayes-optimal ceiling.

This world is self-contained (its own generator, its own users and items) rather than a
:class:`~ctrlib.data.simulator.WorldConfig` knob, so it leaves the core world untouched [ours].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ctrlib import checks as C
from ctrlib.data.schema import Categorical, Schema, Sequence

MODES = ("synergy", "additive")


@dataclass(frozen=True)
class SynergyConfig:
    """The synergy world's knobs; strengths are on the logit scale."""

    n_users: int = 2_000
    n_items: int = 400
    n_text: int = 4            # values of the text-only attribute
    n_image: int = 4           # values of the image-only attribute
    n_shared: int = 3          # values of the attribute both views show
    modal_dim: int = 16        # width of each modal vector
    noise: float = 0.3         # per-coordinate noise of the modal vectors
    history_len: int = 20
    history_focus: float = 0.7  # share of history items with each of the user's preferred attributes
    match_rate: float = 0.5    # chance that an impression's candidate has each preferred attribute
    synergy: float = 2.5       # the conjunction term (text AND image match)
    additive: float = 0.25     # per-modality match
    shared: float = 0.5        # shared-attribute match
    user_bias: float = 0.3     # sd of the user biases
    item_bias: float = 0.3     # sd of the item biases
    base_ctr: float = 0.2      # mean true click probability (the bias is solved for it)
    mode: str = "synergy"      # "additive": the negative control
    seed: int = 0

    def __post_init__(self):
        for name in ("n_users", "n_text", "n_image", "n_shared", "modal_dim", "history_len"):
            C.integer(f"SynergyConfig.{name}", getattr(self, name), 1)
        C.integer("SynergyConfig.n_items", self.n_items, self.n_text * self.n_image * self.n_shared,
                  hint="every combination of the three attributes needs at least one item")
        C.integer("SynergyConfig.seed", self.seed, 0)
        for name in ("noise", "synergy", "additive", "shared", "user_bias", "item_bias"):
            C.real(f"SynergyConfig.{name}", getattr(self, name), 0)
        for name in ("history_focus", "match_rate"):
            C.real(f"SynergyConfig.{name}", getattr(self, name), 0, 1)
        C.real("SynergyConfig.base_ctr", self.base_ctr, 0, 1, low_open=True, high_open=True)
        C.choice("SynergyConfig.mode", self.mode, MODES)


class SynergyWorld:
    """A seeded world of multi-modal items whose clicks need a cross-modal conjunction.

    >>> world = SynergyWorld(SynergyConfig(seed=0))
    >>> df = world.sample(50_000, seed=1)      # ids, history, label, true_p, the matches
    >>> world.modal_tables()["text"].shape     # (n_items + 2, modal_dim): row 0 padding, last OOV
    """

    def __init__(self, config: SynergyConfig | None = None, **overrides):
        cfg = config or SynergyConfig()
        if overrides:
            cfg = SynergyConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        rng = np.random.default_rng([cfg.seed, 404])
        I, U = cfg.n_items, cfg.n_users
        # Items: every attribute combination at least once, the rest at random.
        combos = np.stack(np.meshgrid(np.arange(cfg.n_text), np.arange(cfg.n_image), np.arange(cfg.n_shared),
                                      indexing="ij"), -1).reshape(-1, 3)
        extra = np.stack([rng.integers(0, n, I - len(combos)) for n in (cfg.n_text, cfg.n_image, cfg.n_shared)], 1)
        attrs = rng.permutation(np.concatenate([combos, extra]))
        self.item_text, self.item_image, self.item_shared = attrs[:, 0], attrs[:, 1], attrs[:, 2]
        self.text = self._view(self.item_text, cfg.n_text, rng)      # [I, modal_dim]
        self.image = self._view(self.item_image, cfg.n_image, rng)   # [I, modal_dim]
        self.user_text = rng.integers(0, cfg.n_text, U)
        self.user_image = rng.integers(0, cfg.n_image, U)
        self.user_shared = rng.integers(0, cfg.n_shared, U)
        self.b_user = rng.normal(0, cfg.user_bias, U)
        self.b_item = rng.normal(0, cfg.item_bias, I)
        code = (self.item_text * cfg.n_image + self.item_image) * cfg.n_shared + self.item_shared
        order = np.argsort(code, kind="stable")
        self._combo_items = order                                    # items sorted by attribute combination
        self._combo_start = np.searchsorted(code[order], np.arange(cfg.n_text * cfg.n_image * cfg.n_shared + 1))
        self.histories = self._histories(rng)                        # [U, L], 1-based item ids
        self.bias = 0.0
        self.bias = self._solve_bias()

    # ------------------------------------------------------------------ items and users
    def _view(self, private: np.ndarray, n_private: int, rng) -> np.ndarray:
        cfg = self.config
        onehot = np.zeros((len(private), n_private + cfg.n_shared))
        onehot[np.arange(len(private)), private] = 1
        onehot[np.arange(len(private)), n_private + self.item_shared] = 1
        A = rng.normal(0, 1 / np.sqrt(2), (n_private + cfg.n_shared, cfg.modal_dim))
        return onehot @ A + cfg.noise * rng.normal(size=(len(private), cfg.modal_dim))

    def _items_with(self, text, image, shared, rng) -> np.ndarray:
        """One uniformly drawn item (0-based) with each requested attribute combination."""
        cfg = self.config
        code = (text * cfg.n_image + image) * cfg.n_shared + shared
        start, stop = self._combo_start[code], self._combo_start[code + 1]
        return self._combo_items[start + (rng.random(len(code)) * (stop - start)).astype(np.int64)]

    def _attributes(self, users, rate, rng):
        """Each candidate attribute is the user's preferred value with probability ``rate``, else uniform."""
        cfg = self.config
        out = []
        for pref, n in ((self.user_text, cfg.n_text), (self.user_image, cfg.n_image),
                        (self.user_shared, cfg.n_shared)):
            keep = rng.random(len(users)) < rate
            out.append(np.where(keep, pref[users], rng.integers(0, n, len(users))))
        return out

    def _histories(self, rng) -> np.ndarray:
        cfg = self.config
        users = np.repeat(np.arange(cfg.n_users), cfg.history_len)
        items = self._items_with(*self._attributes(users, cfg.history_focus, rng), rng)
        return items.reshape(cfg.n_users, cfg.history_len) + 1

    # ------------------------------------------------------------------ clicks
    def matches(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """``m_text``, ``m_image``, ``m_shared``: 1 where the item has the user's preferred value."""
        return {"m_text": (self.item_text[items] == self.user_text[users]).astype(np.int8),
                "m_image": (self.item_image[items] == self.user_image[users]).astype(np.int8),
                "m_shared": (self.item_shared[items] == self.user_shared[users]).astype(np.int8)}

    def logit_terms(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """The named logit terms (their sum plus ``self.bias`` is the logit)."""
        cfg, m = self.config, self.matches(users, items)
        t, g = m["m_text"].astype(float), m["m_image"].astype(float)
        if cfg.mode == "synergy":
            modal = cfg.synergy * t * g + cfg.additive * (t + g)
        else:
            modal = (cfg.synergy / 2 + cfg.additive) * (t + g)
        return {"ids": self.b_user[users] + self.b_item[items], "modal": modal, "shared": cfg.shared * m["m_shared"]}

    def _draw(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        users = rng.integers(0, self.config.n_users, n)
        return users, self._items_with(*self._attributes(users, self.config.match_rate, rng), rng)

    def _solve_bias(self) -> float:
        users, items = self._draw(100_000, np.random.default_rng([self.config.seed, 7919]))
        z = sum(self.logit_terms(users, items).values())
        b = np.log(self.config.base_ctr / (1 - self.config.base_ctr)) - z.mean()
        for _ in range(20):
            p = 1 / (1 + np.exp(-(z + b)))
            b -= (p.mean() - self.config.base_ctr) / max((p * (1 - p)).mean(), 1e-9)
        return float(b)

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` impressions in time order: ``user_id``, ``item_id``, ``hist_item_id`` (1-based, 0 =
        padding), ``timestamp`` (the impression's index), ``label``, and the truth: ``true_p``,
        ``true_logit``, ``z_<term>`` and the matches ``m_text``, ``m_image``, ``m_shared``."""
        C.integer("n", n, 1)
        rng = np.random.default_rng([self.config.seed, 405, seed])
        users, items = self._draw(n, rng)
        terms = self.logit_terms(users, items)
        logit = self.bias + sum(terms.values())
        p = 1 / (1 + np.exp(-logit))
        label = (rng.random(n) < p).astype(np.float32)
        return pd.DataFrame({"user_id": users + 1, "item_id": items + 1, "hist_item_id": list(self.histories[users]),
                             "timestamp": np.arange(n), "label": label, "true_p": p, "true_logit": logit,
                             **{f"z_{k}": v for k, v in terms.items()}, **self.matches(users, items)})

    # ------------------------------------------------------------------ what models read
    def modal_tables(self) -> dict[str, np.ndarray]:
        """The item-side modal vectors by item id: ``{"text": [I + 2, d], "image": [I + 2, d]}``, row 0
        (padding) and the last row (out of vocabulary) zero, like the id tables."""
        def table(v):
            return np.concatenate([np.zeros((1, v.shape[1])), v, np.zeros((1, v.shape[1]))]).astype(np.float32)
        return {"text": table(self.text), "image": table(self.image)}

    def schema(self) -> Schema:
        """``user_id``, ``item_id`` and ``hist_item_id`` (sharing the item table); label ``label``."""
        users, items = self.config.n_users + 2, self.config.n_items + 2
        return Schema((Categorical("user_id", users), Categorical("item_id", items),
                       Sequence("hist_item_id", items, self.config.history_len, embedding="item_id")), ("label",))

    def oracle(self, df: pd.DataFrame) -> dict[str, float]:
        """The Bayes-optimal metrics on ``df``: AUC and logloss of the true probabilities."""
        from ctrlib.metrics import oracle_metrics
        return oracle_metrics(df)

"""Action streams (the DFGR / HSTU chapter): ``WorldConfig(action_types=True)`` enables
:func:`action_sequences`, a second simulator over the same users, items and click terms.

What it plants: chronological exposure sequences per user, in sessions (gaps of minutes within a
session, hours to days between sessions), each exposure with an ordinal action: 1 skip, 2 click,
3 like, 4 convert. A user's state ``h[u, c]`` sums the values of their past actions on category c
(skip -0.5, click +0.5, like +1, convert +1.5), halved every ``action_decay_hours``, so the
(item, action) history carries signal beyond the items alone, and time gaps matter.

Oracle (per exposure, no logit column of ``sample``):
    z = offset + static + action_momentum * tanh(h[u, c])       static: the world's impression logit
    P(>= click) = sigmoid(z),  P(>= like) = P(>= click) sigmoid(z - 1),
    P(convert) = P(>= like) sigmoid(z - 1.5)
returned as ``true_p``, ``p_like`` and ``p_convert``. Draws use their own generator
(seed, 606, seed of the call): the impression world is unchanged.
"""
from __future__ import annotations

import numpy as np

from ctrlib.data.world.base import SECONDS_PER_DAY, sample_from_rows

ACTIONS = ("skip", "click", "like", "convert")  # action ids 1..4 (0 = padding)
ACTION_VALUES = np.array([0.0, -0.5, 0.5, 1.0, 1.5])  # a past action's push on the state, by action id


def action_sequences(world, n_users: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Chronological exposure sequences with an action per exposure (needs ``action_types=True``).

    Returns ``[n_users, length]`` arrays ``item_id``, ``category`` (ids from 1), ``action``
    (1 skip, 2 click, 3 like, 4 convert), ``timestamp`` (seconds), ``label`` (action >= click),
    ``true_p`` (the true click probability), ``p_like``, ``p_convert`` (true P(action >= like),
    P(action = convert)), plus ``user_id`` ``[n_users]``; see the module docstring for the model.
    """
    cfg = world.config
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
    items = np.searchsorted(world._item_cdf, rng.random(U * L) * world._item_cdf[-1])
    items[targeted] = world._items_in_categories(sample_from_rows(world._user_interest_cdf, rows[targeted], rng), rng)
    items = np.minimum(items, cfg.n_items - 1)
    f = world._features({"user": rows, "item": items, "timestamp": t.ravel()})
    static = sum(world.logit_terms(f).values()).reshape(U, L)
    cats = f["category"].reshape(U, L)
    # Offset so that about 30% of exposures are clicked when the state is neutral.
    offset = np.log(0.3 / 0.7) - np.median(static)
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
        h[ar, cats[:, s]] += ACTION_VALUES[a]
    return {"user_id": users + 1, "item_id": items.reshape(U, L) + 1, "category": cats + 1,
            "action": action, "timestamp": t, "label": (action >= 2).astype(np.float32), **out}

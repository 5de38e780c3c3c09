"""Scenario groups (the APG chapter): ``WorldConfig(scenario_groups=G)`` with G > 0.

What it plants: every user belongs to one of G groups of Zipf sizes (``scenario_zipf``; group 0
is the largest), carried as a ``scenario`` id column. Each group has its own weights on category,
price, age and device and its own category x price and device x daypart crosses, scaled by
``scenario_strength``.

Oracle term ``scenario``:
    z_scenario = w_g[category] + w_g[price] + w_g[age] + w_g[device]
                 + x_g[category, price] + y_g[device, daypart]          (g = the user's group)
Every table is centred over the groups, so averaged over groups the term vanishes: a model that
ignores the group id sees noise, one that conditions on it can learn each group's function.
Drawn from its own generator (seed, 401), so the rest of the world is unchanged.
"""
from __future__ import annotations

import numpy as np

from ctrlib.data.world.base import N_AGE, N_DAYPART, N_DEVICE, N_PRICE, Knob


class ScenarioGroups(Knob):
    def __init__(self, world):
        super().__init__(world)
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 401])
        G, C, s = cfg.scenario_groups, cfg.n_categories, cfg.scenario_strength
        sizes = 1.0 / np.arange(1, G + 1) ** cfg.scenario_zipf
        self.user_group = rng.choice(G, cfg.n_users, p=sizes / sizes.sum())  # group 0 is the largest

        def centred(*shape, scale=1.0):
            t = rng.normal(0, scale * s, (G, *shape))
            return t - t.mean(axis=0, keepdims=True)

        def rank1_cross(n_a, n_b, scale):  # per group: scale * a_g[x] * b_g[y] with random signs
            a = rng.choice([-1.0, 1.0], (G, n_a, 1))
            b = rng.choice([-1.0, 1.0], (G, 1, n_b))
            t = scale * s * a * b
            return t - t.mean(axis=0, keepdims=True)

        self.weights = {
            "category": centred(C, scale=0.7), "price": centred(N_PRICE, scale=0.5),
            "age": centred(N_AGE, scale=0.5), "device": centred(N_DEVICE, scale=0.5),
            "category_price": rank1_cross(C, N_PRICE, 0.8), "device_daypart": rank1_cross(N_DEVICE, N_DAYPART, 0.6),
        }

    def features(self, f):
        return {"scenario": self.user_group[f["user"]]}

    def terms(self, f):
        g, ws = f["scenario"], self.weights
        return {"scenario": ws["category"][g, f["category"]] + ws["price"][g, f["price"]]
                + ws["age"][g, f["age"]] + ws["device"][g, f["device"]]
                + ws["category_price"][g, f["category"], f["price"]]
                + ws["device_daypart"][g, f["device"], f["daypart"]]}

    def id_columns(self, f):
        return {"scenario": f["scenario"] + 1}

    def vocab_sizes(self):
        return {"scenario": self.config.scenario_groups}

"""What the core world and its knobs share: field sizes, the day, a sampler, and the knob hooks."""
from __future__ import annotations

import numpy as np

SECONDS_PER_DAY = 86_400
N_AGE, N_GENDER, N_CITY, N_DEVICE, N_PRICE, N_DAYPART = 7, 2, 30, 3, 10, 6


def sample_from_rows(cdf: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row index in ``rows``, draw a column from that row's cumulative distribution."""
    r = rng.random(len(rows))[:, None]
    return np.minimum((cdf[rows] < r).sum(axis=1), cdf.shape[1] - 1)


class Knob:
    """A structure planted on top of the core world. ``CTRWorld`` builds its knobs once, after the
    core world, and calls their hooks for every batch of impressions, in this order. Each hook
    returns what it adds (by default nothing); features are 0-based, sample columns 1-based."""

    def __init__(self, world):
        self.world, self.config = world, world.config

    def draw(self, raw: dict[str, np.ndarray], targeted: np.ndarray, rng: np.random.Generator) -> None:
        """Change the raw draws (``user``, ``item``, ``timestamp``) in place, from the main generator."""

    def features(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """More features of each impression, from the core ones in ``f``."""
        return {}

    def terms(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """More named logit terms (the oracle's ``z_<term>`` columns)."""
        return {}

    def id_columns(self, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """More id columns of :meth:`CTRWorld.sample`, after the core ids."""
        return {}

    def sequence_columns(self, f: dict[str, np.ndarray]) -> dict[str, object]:
        """More columns of :meth:`CTRWorld.sample` after the truth (sequences: one array per row)."""
        return {}

    def vocab_sizes(self) -> dict[str, int]:
        """Values per added id field (padding and out-of-vocabulary rows are added by the world)."""
        return {}

    def sequences(self) -> list:
        """The schema's sequence features for the added sequence columns."""
        return []

"""The simulated world is pinned: the default world and every knob draw exactly the numbers they drew
when these checksums were taken, so a refactor of the simulator cannot silently change a chapter's data.

Each checksum covers a sample's column names, dtypes and values: integer columns exactly, float
columns rounded to 9 decimals (numpy's ``exp``/``log`` may differ in the last bit between CPUs;
rounding keeps the pin portable while any real change still shows). If you change the world on
purpose, say so in the commit and update the checksums (the failure message prints the new one).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from ctrlib.data import CTRWorld, WorldConfig

SMALL = dict(n_users=400, n_items=300)  # knob worlds: small, so the test stays fast


def _digest(columns: dict[str, np.ndarray], *extra: str) -> str:
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode())
    for name, values in columns.items():
        values = np.asarray(np.stack(values) if values.dtype == object else values)
        if values.dtype.kind == "f":
            values = np.round(values.astype(np.float64), 9) + 0.0  # + 0.0: -0.0 -> 0.0
        else:
            values = values.astype(np.int64)
        h.update(f"{name}:{values.dtype.kind}:{values.shape}".encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def frame_digest(df: pd.DataFrame, *extra: str) -> str:
    return _digest({c: df[c].to_numpy() for c in df.columns}, *extra)


WORLDS = {
    "default": (lambda: CTRWorld(WorldConfig(seed=0)), "8e2cafdbd44155dd"),
    "static_histories": (lambda: CTRWorld(**SMALL, history_len=8, seed=1), "03b086264b24d12a"),
    "behaviour_stream": (lambda: CTRWorld(**SMALL, history_len=10, history_match=2.0, seed=2), "ab31e3058ed3d391"),
    "scenario_groups": (lambda: CTRWorld(**SMALL, scenario_groups=6, scenario_strength=1.5, seed=3),
                        "6794d8d3598e7973"),
    "time_patterns": (lambda: CTRWorld(**SMALL, n_categories=8, n_days=20, history_len=12, history_match=0.5,
                                       behaviours_per_day=6, session_len=2, time_interests=2.0, time_events=1.5,
                                       request_size=4, seed=4), "147ad54638fdefe6"),
    "time_interests_only": (lambda: CTRWorld(**SMALL, time_interests=1.0, seed=5), "202c9a8244699e99"),
    "action_types": (lambda: CTRWorld(**SMALL, action_types=True, seed=6), "9a1a9e883c81f8c6"),
}


@pytest.mark.parametrize("name", WORLDS)
def test_world_sample_is_pinned(name):
    make, expected = WORLDS[name]
    world = make()
    got = frame_digest(world.sample(3000, seed=7), repr(world.schema()), f"{world.bias:.9f}")
    assert got == expected, f"world {name!r}: sample checksum {got}, pinned {expected}"


BEHAVIOUR_LOG = "917fb2d1152ed0fe"
ACTION_SEQUENCES = "d981a491f85e15c8"


def test_behaviour_log_is_pinned():
    got = frame_digest(WORLDS["time_patterns"][0]().behaviour_log())
    assert got == BEHAVIOUR_LOG, f"behaviour log checksum {got}, pinned {BEHAVIOUR_LOG}"


def test_action_sequences_are_pinned():
    got = _digest(WORLDS["action_types"][0]().action_sequences(60, 50, seed=8))
    assert got == ACTION_SEQUENCES, f"action sequences checksum {got}, pinned {ACTION_SEQUENCES}"

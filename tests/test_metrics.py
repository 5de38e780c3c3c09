import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ctrlib import metrics as M


def test_gauc_equals_a_loop_of_sklearn_auc():
    rng = np.random.default_rng(0)
    n = 2000
    g = rng.integers(0, 50, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.round(rng.random(n) + 0.3 * y, 2)  # rounded: ties must be handled like sklearn
    num = den = 0.0
    for user in np.unique(g):
        m = g == user
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
    assert M.gauc(y, p, g) == pytest.approx(num / den, abs=1e-12)


def test_gauc_needs_a_group_with_both_labels():
    with pytest.raises(ValueError, match="both"):
        M.gauc([1, 1, 0], [0.2, 0.3, 0.4], [1, 1, 2])


def test_compute_and_oracle():
    y = np.array([0, 1, 0, 1.0])
    p = np.array([0.1, 0.9, 0.2, 0.7])
    out = M.compute(y, p, metrics=("auc", "logloss", "calibration"))
    assert out["auc"] == 1.0 and out["logloss"] > 0 and out["calibration"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute(y, p, metrics=("accuracy",))
    with pytest.raises(KeyError, match="oracle exists only"):
        M.oracle_metrics(pd.DataFrame({"label": y}))

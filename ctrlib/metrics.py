"""Metrics: AUC, GAUC, logloss, calibration, and the oracle (Bayes-optimal) row.

AUC and logloss come from scikit-learn. GAUC is computed for all users at once from rank
statistics (the Mann-Whitney form of AUC), which is exact and equal to looping
``roc_auc_score`` per user — the tests check that.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from ctrlib import checks as C

EPS = 1e-7
METRICS = ("auc", "gauc", "logloss", "calibration", "pr_auc", "ne")


def auc(y, p) -> float:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError(f"AUC needs both clicks and non-clicks; all {len(y)} labels are "
                         f"{y[0] if len(y) else 'absent'}")
    return float(roc_auc_score(y, np.asarray(p)))


def logloss(y, p) -> float:
    return float(log_loss(np.asarray(y), np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS), labels=[0, 1]))


def pr_auc(y, p) -> float:
    """Area under the precision-recall curve as scikit-learn's average precision; a random ranking
    scores the positive rate, so it shows a sparse task's gains that ROC-AUC compresses."""
    y = np.asarray(y)
    if not (y == 1).any():
        raise ValueError(f"PR-AUC needs at least one positive label; all {len(y)} labels are 0")
    return float(average_precision_score(y, np.asarray(p)))


def normalized_entropy(y, p) -> float:
    """NE (He et al. 2014; DHEN's metric): logloss / H(p_bar), the entropy of the labels' mean rate
    p_bar. 1 = no better than predicting the base rate; lower is better."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or not 0 < y.mean() < 1:
        raise ValueError(f"NE needs both labels (the base-rate entropy is 0 otherwise); got {len(y)} labels")
    rate = float(y.mean())
    return logloss(y, p) / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))


def gauc(y, p, groups) -> float:
    """Per-group AUC weighted by the group's impressions, over groups with both labels.

    GAUC = sum_u n_u AUC_u / sum_u n_u, the form used by BARS and DIN.
    """
    df = pd.DataFrame({"y": np.asarray(y, dtype=np.float64), "p": np.asarray(p), "g": np.asarray(groups)})
    df["rank"] = df.groupby("g")["p"].rank(method="average")
    df["pos_rank"] = df["rank"] * df["y"]  # sum of the positives' ranks within their group
    agg = df.groupby("g").agg(n=("y", "size"), pos=("y", "sum"), pos_rank=("pos_rank", "sum"))
    agg["neg"] = agg["n"] - agg["pos"]
    agg = agg[(agg["pos"] > 0) & (agg["neg"] > 0)]
    if agg.empty:
        raise ValueError("GAUC needs at least one group with both a positive and a negative label")
    group_auc = (agg["pos_rank"] - agg["pos"] * (agg["pos"] + 1) / 2) / (agg["pos"] * agg["neg"])
    return float((group_auc * agg["n"]).sum() / agg["n"].sum())


def calibration(y, p) -> float:
    """Mean prediction over mean label (1 = calibrated on average)."""
    return float(np.mean(p) / max(np.mean(y), EPS))


def calibration_table(y, p, n_bins: int = 10) -> pd.DataFrame:
    """Observed click rate against mean prediction in quantile bins of the prediction."""
    observed, predicted = calibration_curve(np.asarray(y), np.asarray(p), n_bins=n_bins, strategy="quantile")
    return pd.DataFrame({"predicted": predicted, "observed": observed})


def compute(y, p, groups=None, metrics=("auc", "logloss")) -> dict[str, float]:
    """The named metrics of predictions ``p`` for labels ``y`` (``gauc`` needs ``groups``). Names are
    case-insensitive (``"AUC"``, ``"logloss"``); the keys returned are lower case."""
    fns = {"auc": lambda: auc(y, p), "logloss": lambda: logloss(y, p),
           "calibration": lambda: calibration(y, p), "pr_auc": lambda: pr_auc(y, p),
           "ne": lambda: normalized_entropy(y, p)}
    out = {}
    for m in (metrics,) if isinstance(metrics, str) else metrics:
        m = m.lower() if isinstance(m, str) else m
        C.choice("metric", m, METRICS)
        if m == "gauc":
            if groups is None:
                raise ValueError("gauc is the AUC within each group (e.g. each user), so it needs groups=: "
                                 "pass the group ids (e.g. the user ids), or drop 'gauc' from the metrics")
            out[m] = gauc(y, p, groups)
        else:
            out[m] = fns[m]()
    return out


def oracle_metrics(df: pd.DataFrame, label: str = "label", truth: str = "true_p",
                   group: str | None = None, metrics=("auc", "logloss")) -> dict[str, float]:
    """Metrics of the true click probabilities: the best any model can do in expectation."""
    if truth not in df.columns:
        raise KeyError(f"no {truth!r} column: the oracle exists only for simulated data")
    if group and "gauc" not in metrics:
        metrics = (*metrics, "gauc")
    return compute(df[label].to_numpy(), df[truth].to_numpy(), df[group].to_numpy() if group else None, metrics)

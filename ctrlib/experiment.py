"""The results protocol: arms trained over seeds, intervals for differences, claims with verdicts.

Every chapter compares models the same way:

1. An **arm** is a model factory, the data it sees and one :class:`~ctrlib.train.TrainConfig`.
   :func:`run_arm` trains it once per seed (:func:`train_and_evaluate`: seed everything, build,
   fit with early stopping, score the test set) and keeps every run's test predictions and why
   its training stopped.
2. :func:`compare` measures the difference ``delta = metric(arm b) - metric(arm a)`` (for
   logloss, lower is better, so a *negative* delta is an improvement) and its 95% interval:

   * ``delta`` is the mean over seeds of the per-seed differences (runs are paired by seed);
   * the **test-sampling error** ``se_test`` is the standard deviation of ``delta`` over
     ``n_boot`` *paired* bootstrap replicates of the test set (the same resampled rows score
     every run of both arms, so the noise that both arms share cancels);
   * the **seed error** ``se_seed`` is the standard deviation of the per-seed differences over
     ``sqrt(n_seeds)`` (0 with one seed: QUICK runs cannot see it);
   * the two are independent sources of error, so ``se = sqrt(se_test**2 + se_seed**2)`` and
     ``ci = delta ± 1.96 se``.

   :func:`compare_samples` does the same for repeated measurements that are not predictions
   (timings, memory): a bootstrap of the difference of means (or the ratio of medians).
3. A **claim** is one sentence of the paper, the two arms and the metric that test it, the
   direction it states and an optional margin. Its verdict comes from the interval alone, by
   one rule (:func:`verdict`):

   * ``direction="greater"`` (the claim: b is higher than a): **reproduced** if ``lo > 0``;
     **not reproduced** if ``hi < margin`` (the data rule out a gain as large as ``margin``,
     0 by default: a gain at all); otherwise **inconclusive**;
   * ``direction="less"``: the mirror image (``hi < 0``; ``lo > -margin``);
   * ``direction="equal"`` (the claim: no difference larger than ``margin`` > 0):
     **reproduced** if the interval lies inside ``(-margin, margin)``; **not reproduced** if it
     lies wholly outside; otherwise **inconclusive**.

Chapters record the claims (:func:`claim` returns a JSON-ready dict), show them with
:func:`claims_table`, and write the sentences that interpret them with :func:`say`, which picks
one of three texts written out for the three verdicts.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from torch import nn

from ctrlib import metrics as M
from ctrlib.data.tensors import TensorData
from ctrlib.train import FitResult, TrainConfig, fit, predict, seed_everything

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
DIRECTIONS = ("greater", "less", "equal")
Z95 = 1.959963984540054  # two-sided 95% normal quantile
NOT_TRAINED = "not trained here"  # the stop reason of a run that was not trained (see fixed_arm)


# -- training arms over seeds ----------------------------------------------------------------

@dataclass
class Run:
    """One seed of one arm: test metrics, test predictions and the fit's history."""
    seed: int
    metrics: dict[str, float]
    predictions: np.ndarray = field(repr=False)
    fit: FitResult = field(repr=False)
    label: str = "label"
    model: nn.Module | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)   # the test labels it was scored on
    groups: np.ndarray | None = field(default=None, repr=False)

    @property
    def stop_reason(self) -> str:
        return self.fit.stop_reason if self.fit is not None else NOT_TRAINED


@dataclass
class Arm:
    """Every seed of one arm, scored on one test set (``labels``, and ``groups`` for GAUC)."""
    name: str
    runs: list[Run]
    labels: np.ndarray = field(repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def values(self, metric: str) -> np.ndarray:
        return np.array([r.metrics[metric] for r in self.runs])

    def mean(self, metric: str = "auc") -> float:
        return float(self.values(metric).mean())

    def sd(self, metric: str = "auc") -> float:
        v = self.values(metric)
        return float(v.std(ddof=1)) if len(v) > 1 else 0.0

    def stop_reasons(self) -> list[str]:
        return [r.stop_reason for r in self.runs]

    def summary(self, metrics=("auc", "logloss")) -> dict:
        """Mean and sd per metric, the seeds, and why each run stopped (for a results table)."""
        out = {}
        for m in metrics:
            if m in self.runs[0].metrics:
                out[m], out[f"{m}_sd"] = self.mean(m), self.sd(m)
        out["seeds"] = len(self.runs)
        out["stopped_by"] = ", ".join(f"{n}× {r}" for r, n in pd.Series(self.stop_reasons()).value_counts().items())
        out["epochs"] = float(np.mean([r.fit.history.epoch.max() for r in self.runs]))
        return out


def _first_label(model: nn.Module) -> str:
    schema = getattr(model, "schema", None)
    return schema.labels[0] if schema is not None else "label"


def _score(model: nn.Module, test, group: str | None, batch_size: int):
    """``(labels, predictions, groups or None)`` of a trained model on ``test``: a TensorData scored by
    :func:`~ctrlib.train.predict`, or a function ``model -> (labels, predictions, groups or None)``
    for models scored another way (the generative rankers score held-out events of whole sequences)."""
    if not isinstance(test, TensorData):
        if not callable(test):
            raise TypeError(f"test must be a TensorData or a function model -> (labels, predictions, groups), "
                            f"got {type(test).__name__}")
        y, p, g = test(model)
        return np.asarray(y), np.asarray(p), None if g is None else np.asarray(g)
    label = _first_label(model)
    p = predict(model, test, batch_size)
    p = p[label] if isinstance(p, dict) else p
    return test[label].numpy(), p, (test[group].numpy() if group else None)


def train_and_evaluate(build: Callable[[], nn.Module], train: TensorData, valid, test,
                       config: TrainConfig, seed: int, metrics=("auc", "logloss"), group: str | None = None,
                       keep_model: bool = False) -> Run:
    """The one "seed, build, fit, evaluate" step of every chapter.

    Seeds Python, numpy and torch with ``seed`` before ``build()`` (so the initial weights depend on
    it), trains with ``config`` (its ``seed`` replaced by ``seed``: shuffling and dropout too) and
    scores ``test`` (a TensorData, or a scoring function: see :func:`_score`) with the best epoch's weights.
    """
    seed_everything(seed)
    model = build()
    result = fit(model, train, valid, config, seed=seed)
    y, p, groups = _score(model, test, group, config.eval_batch_size)
    wanted = tuple(m for m in metrics if m != "gauc" or groups is not None)
    return Run(seed, M.compute(y, p, groups, wanted), p, result, _first_label(model),
               model if keep_model else None, labels=y, groups=groups)


def run_arm(name: str, build: Callable[[], nn.Module], train: TensorData, valid, test,
            config: TrainConfig, seeds, metrics=("auc", "logloss"), group: str | None = None,
            keep_models: bool = False) -> Arm:
    """Train and score one arm once per seed (see :func:`train_and_evaluate`). ``test`` is a TensorData
    or a function ``model -> (labels, predictions, groups)`` that returns the same rows for every seed."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"arm {name!r}: seeds is empty; give at least one seed")
    runs = [train_and_evaluate(build, train, valid, test, config, s, metrics, group, keep_models) for s in seeds]
    for r in runs[1:]:
        if not np.array_equal(r.labels, runs[0].labels):
            raise ValueError(f"arm {name!r}: the test labels differ between seeds {runs[0].seed} and {r.seed}; "
                             "every seed must be scored on the same test rows")
    return Arm(name, runs, runs[0].labels, runs[0].groups)


def arms_table(arms, oracle: dict | None = None, metric: str = "auc", metrics=("auc", "logloss")) -> pd.DataFrame:
    """Mean ± sd per arm (best first), the seeds, why the runs stopped, and the oracle as last row."""
    rows = {a.name: a.summary(metrics) for a in arms}
    table = pd.DataFrame(rows).T.sort_values(metric, ascending=(metric == "logloss"))
    if oracle is not None:
        table.loc["oracle"] = pd.Series({k: v for k, v in oracle.items() if k in metrics})
        table[f"{metric} gap to oracle"] = table[metric].astype(float) - oracle[metric]
    table.index.name = "model"
    return table



def fixed_arm(name: str, predictions, labels, seeds, metrics=("auc", "logloss"), groups=None) -> Arm:
    """An arm that is not trained (the oracle's true probabilities, a hand-made rule), scored on the
    same test set as trained arms so that :func:`compare` can pair them: the same ``predictions``
    stand in for every seed, so only the trained arm's seed spread enters the interval. Its runs
    report the stop reason ``NOT_TRAINED``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"arm {name!r}: seeds is empty; give the seeds of the arms it is compared with")
    p = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(labels)
    g = None if groups is None else np.asarray(groups)
    if p.shape != y.shape or (g is not None and g.shape != y.shape):
        raise ValueError(f"arm {name!r}: predictions {p.shape}, labels {y.shape} and groups must have one shape")
    wanted = tuple(m for m in metrics if m != "gauc" or g is not None)
    scores = M.compute(y, p, g, wanted)
    return Arm(name, [Run(s, dict(scores), p, None) for s in seeds], y, g)


def checkpoint_arm(name: str, labels, runs, groups=None, metrics=("auc", "logloss")) -> Arm:
    """An arm made of predictions saved along training (a checkpoint of each seed's curve, e.g. the
    test predictions at epoch 1.25): ``runs`` is a list of ``(seed, predictions, fit_result)``, all
    scored on the test set ``labels``. The runs keep their fit's stop reason."""
    y = np.asarray(labels)
    g = None if groups is None else np.asarray(groups)
    out = []
    for seed, p, result in runs:
        p = np.asarray(p, dtype=np.float64)
        if p.shape != y.shape:
            raise ValueError(f"arm {name!r}, seed {seed}: predictions {p.shape} but labels {y.shape}")
        wanted = tuple(m for m in metrics if m != "gauc" or g is not None)
        out.append(Run(seed, M.compute(y, p, g, wanted), p, result))
    if not out:
        raise ValueError(f"arm {name!r}: no runs")
    return Arm(name, out, y, g)


def restrict(arm: Arm, rows, name: str | None = None) -> Arm:
    """The same arm scored on part of its test rows (a slice, one group of users): ``rows`` is a
    boolean mask over the test set or an array of row indices. Every run's predictions and recorded
    metrics are cut to those rows, so :func:`compare` of two restricted paired arms gives the
    difference within that part of the test set."""
    rows = np.asarray(rows)
    if rows.dtype == bool and rows.shape != arm.labels.shape:
        raise ValueError(f"restrict({arm.name!r}): mask has shape {rows.shape}, the test set {arm.labels.shape}")
    mask = rows if rows.dtype == bool else np.isin(np.arange(len(arm.labels)), rows)
    if not mask.any():
        raise ValueError(f"restrict({arm.name!r}): no test row selected")
    y = arm.labels[mask]
    g = None if arm.groups is None else arm.groups[mask]
    wanted = tuple(m for m in arm.runs[0].metrics if m != "gauc" or g is not None)
    runs = [Run(r.seed, M.compute(y, r.predictions[mask], g, wanted), r.predictions[mask], r.fit, r.label)
            for r in arm.runs]
    return Arm(name or arm.name, runs, y, g)


def task_arms(arm: Arm, test: TensorData, labels, metrics=("auc", "logloss"), batch_size: int = 16_384) -> dict:
    """One :class:`Arm` per task of a multi-task arm (``run_arm(..., keep_models=True)``): every run's
    model scores ``test`` once and each label in ``labels`` gets its own arm (named ``arm.name``), so
    per-task comparisons pair runs by seed as :func:`compare` needs. Returns ``{label: Arm}``."""
    if any(r.model is None for r in arm.runs):
        raise ValueError(f"task_arms({arm.name!r}): the runs kept no model; train the arm with keep_models=True")
    labels = list(labels)
    missing = [k for k in labels if k not in test.tensors]
    if missing:
        raise KeyError(f"task_arms({arm.name!r}): the test data lacks the labels {missing}")
    scored = []
    for r in arm.runs:
        p = predict(r.model, test, batch_size)
        p = p if isinstance(p, dict) else {_first_label(r.model): p}
        absent = [k for k in labels if k not in p]
        if absent:
            raise KeyError(f"task_arms({arm.name!r}): the model predicts {list(p)}, not {absent}")
        scored.append(p)
    out = {}
    for k in labels:
        y = test[k].numpy()
        runs = [Run(r.seed, M.compute(y, p[k], None, metrics), p[k], r.fit, k, labels=y)
                for r, p in zip(arm.runs, scored)]
        out[k] = Arm(arm.name, runs, y)
    return out


# -- intervals -------------------------------------------------------------------------------

def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multinomial counts: how often each test row appears in each replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of ``p`` for labels ``y`` under row weights ``w`` ``[R, n]`` (ties count one half): ``[R]``."""
    order = np.argsort(p, kind="mergesort")
    y, p, w = y[order], p[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])       # first row of each tie group
    pos = np.add.reduceat(w * y, starts, axis=1)                 # [R, groups] weighted positives
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)           # [R, groups] weighted negatives
    below = np.cumsum(neg, axis=1) - neg                         # negatives strictly below each group
    pairs = (pos * (below + 0.5 * neg)).sum(1)
    total = pos.sum(1) * neg.sum(1)
    return np.where(total > 0, pairs / np.where(total > 0, total, 1), np.nan)


def _replicate_metric(metric: str, y, p, groups, counts) -> np.ndarray:
    """The metric of one run's predictions on every bootstrap replicate: ``[R]``."""
    if metric == "auc":
        return _weighted_auc(y, p, counts)
    if metric == "logloss":
        q = np.clip(p.astype(np.float64), M.EPS, 1 - M.EPS)
        loss = -(y * np.log(q) + (1 - y) * np.log(1 - q))
        return counts @ loss / counts.sum(1)
    out = []  # any other metric: recompute it on the resampled rows (slower)
    for c in counts:
        idx = np.repeat(np.arange(len(y)), c.astype(np.int64))
        out.append(M.compute(y[idx], p[idx], None if groups is None else groups[idx], (metric,))[metric])
    return np.array(out)


def compare(a: Arm, b: Arm, metric: str = "auc", n_boot: int = 1000, seed: int = 0) -> dict:
    """``delta = metric(b) - metric(a)`` with its 95% interval (the method is in the module docstring).

    Both arms must be scored on the same test set with the same seeds (runs are paired by seed).
    Returns the evidence of a claim: ``delta``, ``ci``, ``seeds``, ``n_test``, ``per_seed``,
    ``se_test``, ``se_seed``, ``a``/``b`` (mean ± sd of each arm), ``stopped_by`` and ``method``.
    """
    if a.labels is None or b.labels is None or len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        raise ValueError(f"compare({a.name!r}, {b.name!r}): the arms were scored on different test sets; "
                         "a paired comparison needs the same test rows (use compare_samples for unpaired numbers)")
    if a.seeds != b.seeds:
        raise ValueError(f"compare({a.name!r}, {b.name!r}): seeds differ ({a.seeds} vs {b.seeds}); "
                         "train both arms with the same seeds")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    per_seed = b.values(metric) - a.values(metric)
    delta = float(per_seed.mean())
    y = a.labels.astype(np.float64)
    rng = np.random.default_rng(seed)
    replicates = np.zeros(n_boot)
    chunk = max(1, min(n_boot, 20_000_000 // max(len(y), 1)))   # bound the [R, n] count matrix
    for start in range(0, n_boot, chunk):
        counts = _bootstrap_counts(len(y), min(chunk, n_boot - start), rng)
        diffs = [_replicate_metric(metric, y, rb.predictions, b.groups, counts)
                 - _replicate_metric(metric, y, ra.predictions, a.groups, counts)
                 for ra, rb in zip(a.runs, b.runs)]
        replicates[start:start + len(counts)] = np.mean(diffs, axis=0)
    se_test = float(np.nanstd(replicates, ddof=1))
    se_seed = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
    se = math.hypot(se_test, se_seed)
    return {"delta": delta, "ci": [delta - Z95 * se, delta + Z95 * se], "seeds": a.seeds, "n_test": int(len(y)),
            "per_seed": per_seed.tolist(), "se_test": se_test, "se_seed": se_seed,
            "a": {"name": a.name, "mean": a.mean(metric), "sd": a.sd(metric)},
            "b": {"name": b.name, "mean": b.mean(metric), "sd": b.sd(metric)},
            "stopped_by": {a.name: a.stop_reasons(), b.name: b.stop_reasons()},
            "method": f"paired bootstrap over test rows ({n_boot} replicates) combined with the seed spread"}


def compare_changes(a_before: Arm, a_after: Arm, b_before: Arm, b_after: Arm, metric: str = "auc",
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """How much more ``b`` changed than ``a``: ``delta = (b_after - b_before) - (a_after - a_before)``,
    e.g. the AUC lost after the peak with and without pre-training (a positive delta: b lost less).

    A difference of paired differences: all four arms are scored on the same test rows with the same
    seeds; every bootstrap replicate resamples the test rows once for all four (so the noise they
    share cancels), combined with the seed spread of the per-seed values as in :func:`compare`."""
    arms = (a_before, a_after, b_before, b_after)
    for arm in arms[1:]:
        if not np.array_equal(arm.labels, a_before.labels):
            raise ValueError(f"compare_changes: {arm.name!r} was scored on another test set than {a_before.name!r}")
        if arm.seeds != a_before.seeds:
            raise ValueError(f"compare_changes: seeds differ ({a_before.name!r} {a_before.seeds}, "
                             f"{arm.name!r} {arm.seeds}); train every arm with the same seeds")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    signs = (1.0, -1.0, -1.0, 1.0)  # of (a_before, a_after, b_before, b_after) in delta
    per_seed = b_after.values(metric) - b_before.values(metric) - (a_after.values(metric) - a_before.values(metric))
    delta = float(per_seed.mean())
    y = a_before.labels.astype(np.float64)
    rng = np.random.default_rng(seed)
    replicates = np.zeros(n_boot)
    chunk = max(1, min(n_boot, 20_000_000 // max(len(y), 1)))
    for start in range(0, n_boot, chunk):
        counts = _bootstrap_counts(len(y), min(chunk, n_boot - start), rng)
        per_run = [sum(s * _replicate_metric(metric, y, runs[i].predictions, arms[i].groups, counts)
                       for i, s in enumerate(signs))
                   for runs in zip(*(arm.runs for arm in arms))]
        replicates[start:start + len(counts)] = np.mean(per_run, axis=0)
    se_test = float(np.nanstd(replicates, ddof=1))
    se_seed = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
    se = math.hypot(se_test, se_seed)
    return {"delta": delta, "ci": [delta - Z95 * se, delta + Z95 * se], "seeds": a_before.seeds,
            "n_test": int(len(y)), "per_seed": per_seed.tolist(), "se_test": se_test, "se_seed": se_seed,
            "a": {"name": f"{a_after.name} − {a_before.name}",
                  "delta": float((a_after.values(metric) - a_before.values(metric)).mean())},
            "b": {"name": f"{b_after.name} − {b_before.name}",
                  "delta": float((b_after.values(metric) - b_before.values(metric)).mean())},
            "stopped_by": {arm.name: arm.stop_reasons() for arm in arms},
            "method": f"difference of paired differences: paired bootstrap over test rows ({n_boot} "
                      "replicates) combined with the seed spread"}


def compare_samples(a, b, statistic: str = "mean_difference", n_boot: int = 2000, seed: int = 0) -> dict:
    """The difference of two sets of repeated measurements (timings, memory, AUCs of other test sets).

    ``statistic="mean_difference"``: ``mean(b) - mean(a)``; ``"median_ratio"``: ``median(b) / median(a)``
    (compare it with 1 via ``margin`` or use ``log`` thinking: a claim "b is faster" is ``direction="less"``
    on a ratio minus one, which this returns as ``delta = ratio - 1``). The interval is a percentile
    bootstrap resampling each set independently. ``seeds`` lists the repetitions and ``n_test`` counts them.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare_samples needs at least 2 measurements per side, got {len(a)} and {len(b)}")
    stats = {"mean_difference": lambda x, y: y.mean(-1) - x.mean(-1),
             "median_ratio": lambda x, y: np.median(y, -1) / np.median(x, -1) - 1}
    if statistic not in stats:
        raise ValueError(f"statistic must be one of {list(stats)}, got {statistic!r}")
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), (n_boot, len(a)))]
    rb = b[rng.integers(0, len(b), (n_boot, len(b)))]
    reps = stats[statistic](ra, rb)
    delta = float(stats[statistic](a, b))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"delta": delta, "ci": [float(lo), float(hi)], "seeds": list(range(min(len(a), len(b)))),
            "n_test": int(len(a) + len(b)), "a": {"mean": float(a.mean()), "median": float(np.median(a))},
            "b": {"mean": float(b.mean()), "median": float(np.median(b))},
            "method": f"percentile bootstrap of the {statistic.replace('_', ' ')} ({n_boot} replicates)"}


def difference(a: dict, b: dict, a_label: str = "a", b_label: str = "b") -> dict:
    """``b["delta"] - a["delta"]`` for two differences measured on *independent* test sets (the same
    comparison in two worlds, e.g. a mechanism on and off): the errors of independent measurements
    add, ``se = sqrt(se_a**2 + se_b**2)``, each ``se`` read back from its 95% interval. Returns the
    evidence of a claim; ``stopped_by`` keeps both sides' runs, prefixed by ``a_label``/``b_label``."""
    se = [(e["ci"][1] - e["ci"][0]) / (2 * Z95) for e in (a, b)]
    delta = float(b["delta"] - a["delta"])
    half = Z95 * math.hypot(*se)
    stopped = {f"{label}: {name}": runs for label, e in ((a_label, a), (b_label, b))
               for name, runs in e.get("stopped_by", {}).items()}
    return {"delta": delta, "ci": [delta - half, delta + half], "seeds": sorted(set(a["seeds"]) & set(b["seeds"])),
            "n_test": int(a["n_test"] + b["n_test"]), "a": {"name": a_label, "delta": a["delta"], "ci": a["ci"]},
            "b": {"name": b_label, "delta": b["delta"], "ci": b["ci"]}, "stopped_by": stopped,
            "method": "difference of two independent differences; standard errors added in quadrature"}


def compare_spread(a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """How much more (or less) ``b`` varies than ``a``: ``delta = sd(b) / sd(a) - 1`` for two sets of
    repeated measurements (e.g. an AUC on independent test sets of two sizes), with a percentile
    bootstrap interval that resamples each set independently. ``seeds`` lists the repetitions and
    ``n_test`` counts them, as in :func:`compare_samples`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or len(b) < 3:
        raise ValueError(f"compare_spread needs at least 3 measurements per side, got {len(a)} and {len(b)}")
    if a.std() == 0:
        raise ValueError("compare_spread: the first set does not vary (sd 0), so no ratio exists")
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), (n_boot, len(a)))].std(-1, ddof=1)
    rb = b[rng.integers(0, len(b), (n_boot, len(b)))].std(-1, ddof=1)
    reps = rb[ra > 0] / ra[ra > 0] - 1
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"delta": float(b.std(ddof=1) / a.std(ddof=1) - 1), "ci": [float(lo), float(hi)],
            "seeds": list(range(min(len(a), len(b)))), "n_test": int(len(a) + len(b)),
            "a": {"sd": float(a.std(ddof=1)), "n": len(a)}, "b": {"sd": float(b.std(ddof=1)), "n": len(b)},
            "method": f"percentile bootstrap of the ratio of standard deviations ({n_boot} replicates)"}


def compare_paired_samples(a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """The ratio of measurements taken side by side, ``b[i] / a[i]`` (e.g. timings of two models run
    alternately: A, B, A, B, ...; each pair shares the machine's load at that moment).

    ``delta = median(b / a) - 1`` (a claim "b is faster" is ``direction="less"``); the interval is a
    percentile bootstrap over the pairs. Pairing removes the load drift that both members of a pair
    share, which :func:`compare_samples` (independent resampling of each side) leaves in.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"compare_paired_samples needs two equally long sets of >= 2 paired measurements, "
                         f"got {len(a)} and {len(b)}")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("paired ratios need positive measurements")
    ratio = b / a
    reps = np.median(ratio[np.random.default_rng(seed).integers(0, len(ratio), (n_boot, len(ratio)))], axis=1) - 1
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"delta": float(np.median(ratio) - 1), "ci": [float(lo), float(hi)], "seeds": list(range(len(a))),
            "n_test": int(len(a)), "a": {"median": float(np.median(a))}, "b": {"median": float(np.median(b))},
            "ratios": ratio.tolist(),
            "method": f"percentile bootstrap over the pairs of the median ratio b/a ({n_boot} replicates)"}


# -- claims and verdicts ---------------------------------------------------------------------

def verdict(ci, direction: str = "greater", margin: float = 0.0) -> str:
    """The one rule from an interval to a verdict (see the module docstring)."""
    lo, hi = float(ci[0]), float(ci[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"a confidence interval must be two finite numbers lo <= hi, got {ci}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if margin < 0 or (direction == "equal" and margin <= 0):
        raise ValueError(f"margin must be >= 0 (> 0 for 'equal'), got {margin}")
    if direction == "greater":
        return REPRODUCED if lo > 0 else NOT_REPRODUCED if hi < margin else INCONCLUSIVE
    if direction == "less":
        return REPRODUCED if hi < 0 else NOT_REPRODUCED if lo > -margin else INCONCLUSIVE
    if -margin < lo and hi < margin:
        return REPRODUCED
    return NOT_REPRODUCED if lo >= margin or hi <= -margin else INCONCLUSIVE


def claim(text: str, evidence: dict, metric: str, arms: tuple[str, str], direction: str = "greater",
          margin: float = 0.0, headline: bool = True, note: str = "", fixed_budget: str = "") -> dict:
    """A claim as the results JSON records it, with its verdict computed from ``evidence['ci']``.

    ``text`` is the paper's claim in one sentence; ``arms`` = (baseline a, treatment b) of
    ``delta = b - a``; ``headline`` marks the chapter's main comparisons (≥ 3 seeds, trained to
    early stopping in full mode); ``note`` says what the arms are when the names do not.
    ``fixed_budget`` (e.g. ``"3 epochs: the claim is about the curve's points"``) states the fixed
    training budget of a claim about a training curve, where early stopping is not the stop rule
    (the curve past the best epoch is the measurement): ``tools/claims.py`` then accepts runs stopped
    by the epoch cap (they still need >= 3 seeds in full mode).
    """
    for key in ("delta", "ci", "seeds", "n_test"):
        if key not in evidence:
            raise KeyError(f"claim {text!r}: evidence lacks {key!r} (it needs delta, ci, seeds, n_test)")
    return {"claim": text, "metric": metric, "arms": list(arms), "direction": direction, "margin": float(margin),
            "headline": bool(headline), "note": note, **({"fixed_budget": fixed_budget} if fixed_budget else {}),
            "verdict": verdict(evidence["ci"], direction, margin), "evidence": dict(evidence)}


def recompute_verdict(record: dict) -> str:
    """The verdict a recorded claim's evidence gives by the rule (the tests compare it with the record)."""
    return verdict(record["evidence"]["ci"], record["direction"], record["margin"])


def claims_table(claims) -> pd.DataFrame:
    """The "Claims checked" table: the paper's claim, our measurement with its interval, the verdict."""
    rows = []
    for c in claims:
        e = c["evidence"]
        rows.append({"claim (paper)": c["claim"], "compared": f"{c['arms'][1]} − {c['arms'][0]}",
                     "metric": c["metric"], "Δ (ours)": f"{e['delta']:+.4f}",
                     "95% CI": f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]", "seeds": len(e["seeds"]),
                     "n test": e["n_test"], "verdict": c["verdict"]})
    return pd.DataFrame(rows)


def say(record: dict, reproduced: str, not_reproduced: str, inconclusive: str, **values) -> str:
    """The sentence for a claim's verdict: one of three texts, each written out in the chapter.

    The texts are ``str.format`` templates; ``{delta}``, ``{lo}``, ``{hi}`` (signed, 4 decimals),
    ``{verdict}`` and any ``values`` passed here are filled in.
    """
    e = record["evidence"]
    fields = {"delta": f"{e['delta']:+.4f}", "lo": f"{e['ci'][0]:+.4f}", "hi": f"{e['ci'][1]:+.4f}",
              "verdict": record["verdict"], **values}
    text = {REPRODUCED: reproduced, NOT_REPRODUCED: not_reproduced, INCONCLUSIVE: inconclusive}[record["verdict"]]
    return text.format(**fields)


def describe(evidence: dict, higher: str = "higher", lower: str = "lower") -> str:
    """A difference in words, from its interval: "higher by +0.0123 (95% CI +0.0040 to +0.0206)",
    "lower by ...", or "not distinguishable from zero (Δ ..., 95% CI ... to ...)"."""
    d, (lo, hi) = evidence["delta"], evidence["ci"]
    interval = f"95% CI {lo:+.4f} to {hi:+.4f}"
    if lo > 0:
        return f"{higher} by {d:+.4f} ({interval})"
    if hi < 0:
        return f"{lower} by {d:+.4f} ({interval})"
    return f"not distinguishable from zero (Δ {d:+.4f}, {interval})"


__all__ = ["Run", "Arm", "train_and_evaluate", "run_arm", "fixed_arm", "restrict", "arms_table",
           "compare", "compare_samples", "compare_paired_samples", "compare_spread", "verdict", "claim",
           "recompute_verdict", "claims_table", "say", "describe", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE",
           "NOT_TRAINED", "difference", "checkpoint_arm", "compare_changes",
           "task_arms"]

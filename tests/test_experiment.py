"""The results protocol: the verdict rule, the intervals, and arms over seeds."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.experiment import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TRAINED, REPRODUCED, Arm, Run, _weighted_auc,
                               claim, claims_table, compare, compare_paired_samples, compare_samples, compare_spread,
                               describe, fixed_arm, recompute_verdict, restrict, run_arm, say, verdict)
from ctrlib.models import DeepFM, LogisticRegression
from ctrlib.train import TrainConfig


@pytest.mark.parametrize("ci, direction, margin, expected", [
    ((0.001, 0.02), "greater", 0.0, REPRODUCED),
    ((-0.02, -0.001), "greater", 0.0, NOT_REPRODUCED),
    ((-0.01, 0.01), "greater", 0.0, INCONCLUSIVE),
    ((-0.01, 0.0005), "greater", 0.001, NOT_REPRODUCED),   # rules out a gain as large as the margin
    ((-0.01, 0.002), "greater", 0.001, INCONCLUSIVE),
    ((-0.02, -0.001), "less", 0.0, REPRODUCED),
    ((0.001, 0.02), "less", 0.0, NOT_REPRODUCED),
    ((-0.0005, 0.01), "less", 0.001, NOT_REPRODUCED),
    ((-0.003, 0.004), "equal", 0.005, REPRODUCED),
    ((0.006, 0.01), "equal", 0.005, NOT_REPRODUCED),
    ((-0.01, -0.006), "equal", 0.005, NOT_REPRODUCED),
    ((0.001, 0.01), "equal", 0.005, INCONCLUSIVE),
])
def test_verdict_rule(ci, direction, margin, expected):
    assert verdict(ci, direction, margin) == expected


@pytest.mark.parametrize("ci, direction, margin, message", [
    ((0.1, 0.0), "greater", 0.0, "lo <= hi"),
    ((float("nan"), 0.1), "greater", 0.0, "finite"),
    ((0.0, 0.1), "bigger", 0.0, "direction"),
    ((0.0, 0.1), "equal", 0.0, "margin"),
    ((0.0, 0.1), "greater", -1.0, "margin"),
])
def test_verdict_rejects_bad_input(ci, direction, margin, message):
    with pytest.raises(ValueError, match=message):
        verdict(ci, direction, margin)


def test_weighted_auc_equals_sklearn_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    p = np.round(rng.random(500) + 0.3 * y, 1)           # many ties
    assert _weighted_auc(y, p, np.ones((1, 500)))[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    counts = rng.integers(0, 3, (2, 500)).astype(float)   # a replicate = rows repeated counts times
    for c in counts:
        idx = np.repeat(np.arange(500), c.astype(int))
        assert _weighted_auc(y, p, c[None])[0] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)


def _arm(name, y, predictions, seeds):
    runs = [Run(s, {"auc": roc_auc_score(y, p)}, p, None) for s, p in zip(seeds, predictions)]
    return Arm(name, runs, y)


def test_test_sampling_error_matches_fresh_test_sets():
    """se_test must estimate how much delta moves between independent test sets of the same size."""
    rng = np.random.default_rng(1)

    def draw(n):
        x = rng.normal(size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(float)
        return y, x + rng.normal(scale=1.5, size=n), x + rng.normal(scale=1.0, size=n)  # b is the better model

    deltas, ses = [], []
    for _ in range(30):
        y, pa, pb = draw(1500)
        e = compare(_arm("a", y, [pa], [0]), _arm("b", y, [pb], [0]), n_boot=300)
        deltas.append(e["delta"])
        ses.append(e["se_test"])
    assert np.mean(deltas) > 0
    assert 0.7 < np.mean(ses) / np.std(deltas, ddof=1) < 1.4, (np.mean(ses), np.std(deltas, ddof=1))


def test_compare_pairs_by_seed_and_adds_the_seed_spread():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 800).astype(float)
    base = y + rng.normal(scale=2.0, size=800)
    a = _arm("a", y, [base + rng.normal(scale=0.1, size=800) for _ in range(3)], [0, 1, 2])
    b = _arm("b", y, [base + rng.normal(scale=s, size=800) for s in (0.5, 1.5, 3.0)], [0, 1, 2])
    e = compare(a, b, n_boot=200)
    assert e["delta"] == pytest.approx(np.mean(e["per_seed"]))
    assert e["se_seed"] == pytest.approx(np.std(e["per_seed"], ddof=1) / np.sqrt(3))
    half = (e["ci"][1] - e["ci"][0]) / 2
    assert half == pytest.approx(1.959964 * np.hypot(e["se_test"], e["se_seed"]))
    assert e["seeds"] == [0, 1, 2] and e["n_test"] == 800
    # identical predictions: no difference and a zero-width interval
    same = compare(a, a, n_boot=50)
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0]


def test_compare_refuses_unpaired_arms():
    y = np.array([0.0, 1.0, 0.0, 1.0])
    p = np.array([0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match="different test sets"):
        compare(_arm("a", y, [p], [0]), _arm("b", y[::-1].copy(), [p], [0]))
    with pytest.raises(ValueError, match="seeds differ"):
        compare(_arm("a", y, [p], [0]), _arm("b", y, [p], [1]))


def test_compare_samples_mean_difference_and_ratio():
    a, b = [10.0, 11.0, 9.0, 10.5], [5.0, 5.5, 4.5, 5.2]
    e = compare_samples(a, b)
    assert e["delta"] == pytest.approx(np.mean(b) - np.mean(a)) and e["ci"][1] < 0
    r = compare_samples(a, b, "median_ratio")
    assert r["delta"] == pytest.approx(np.median(b) / np.median(a) - 1)
    with pytest.raises(ValueError, match="at least 2"):
        compare_samples([1.0], b)
    with pytest.raises(ValueError, match="statistic"):
        compare_samples(a, b, "mode")


def test_claim_records_its_verdict_and_prose_follows_it():
    ev = {"delta": 0.01, "ci": [0.004, 0.016], "seeds": [0, 1, 2], "n_test": 5000}
    c = claim("B beats A.", ev, "auc", ("A", "B"))
    assert c["verdict"] == REPRODUCED == recompute_verdict(c)
    c["evidence"]["ci"] = [-0.002, 0.016]              # a tampered interval no longer gives the verdict
    assert recompute_verdict(c) == INCONCLUSIVE != c["verdict"]
    texts = dict(reproduced="holds ({delta})", not_reproduced="fails", inconclusive="open [{lo}, {hi}] {x}")
    assert say(claim("B beats A.", ev, "auc", ("A", "B")), **texts) == "holds (+0.0100)"
    assert say(c | {"verdict": INCONCLUSIVE}, **texts, x="!") == "open [-0.0020, +0.0160] !"
    table = claims_table([claim("B beats A.", ev, "auc", ("A", "B"))])
    assert list(table["verdict"]) == [REPRODUCED] and table["seeds"].iloc[0] == 3
    assert describe(ev).startswith("higher by +0.0100")
    assert describe({"delta": 0.0, "ci": [-0.01, 0.01]}).startswith("not distinguishable")
    with pytest.raises(KeyError, match="n_test"):
        claim("x", {"delta": 0, "ci": [0, 1], "seeds": [0]}, "auc", ("A", "B"))


@pytest.fixture(scope="module")
def small_world():
    world = CTRWorld(seed=0, n_users=200, n_items=100)
    schema = world.schema()
    return schema, [TensorData.from_frame(d, schema) for d in split_by_time(world.sample(5000, seed=0))]


def test_run_arm_is_reproducible_and_records_why_runs_stopped(small_world):
    schema, (train, valid, test) = small_world
    cfg = TrainConfig(epochs=2, batch_size=512, patience=5, progress=False)
    arm = run_arm("LR", lambda: LogisticRegression(schema), train, valid, test, cfg, seeds=[0, 1])
    again = run_arm("LR", lambda: LogisticRegression(schema), train, valid, test, cfg, seeds=[0, 1])
    assert arm.values("auc").tolist() == again.values("auc").tolist()
    assert arm.stop_reasons() == ["epoch cap", "epoch cap"]   # patience 5 > 2 epochs: the cap stopped them
    deep = run_arm("DeepFM", lambda: DeepFM(schema, 4, (16,)), train, valid, test,
                   TrainConfig(epochs=50, batch_size=512, patience=1, lr=3e-2, progress=False), seeds=[0, 1])
    assert deep.stop_reasons() == ["early stopping", "early stopping"]
    e = compare(arm, deep, n_boot=50)
    assert e["stopped_by"] == {"LR": arm.stop_reasons(), "DeepFM": deep.stop_reasons()}
    with pytest.raises(ValueError, match="seeds is empty"):
        run_arm("LR", lambda: LogisticRegression(schema), train, valid, test, cfg, seeds=[])


def test_an_arm_scored_by_a_function_equals_one_scored_on_the_test_data(small_world):
    """run_arm with a scoring function gives the same arm as with the test set when it predicts that set."""
    from ctrlib.train import predict
    schema, (train, valid, test) = small_world
    cfg = TrainConfig(epochs=2, batch_size=512, patience=5, progress=False)
    build = lambda: DeepFM(schema, 4, (16,))  # noqa: E731
    plain = run_arm("DeepFM", build, train, valid, test, cfg, seeds=[0, 1])
    scored = run_arm("DeepFM", build, train, valid,
                     lambda m: (test["label"].numpy(), predict(m, test), None), cfg, seeds=[0, 1])
    assert scored.values("auc").tolist() == plain.values("auc").tolist()
    assert scored.stop_reasons() == plain.stop_reasons()
    assert compare(plain, scored, n_boot=20)["delta"] == 0.0
    shuffled = iter([test["label"].numpy(), test["label"].numpy()[::-1]])
    with pytest.raises(ValueError, match="test labels differ"):
        run_arm("DeepFM", build, train, valid, lambda m: (next(shuffled), predict(m, test), None), cfg,
                seeds=[0, 1])
    with pytest.raises(TypeError, match="TensorData or a function"):
        run_arm("DeepFM", build, train, valid, "test.csv", cfg, seeds=[0])


def test_claims_check_reports_each_protocol_breach():
    import claims as claims_check  # tools/claims.py

    ev = {"delta": 0.01, "ci": [0.004, 0.016], "seeds": [0, 1, 2], "n_test": 5000,
          "stopped_by": {"A": ["early stopping"] * 3, "B": ["early stopping"] * 3}}
    good = claim("B beats A.", ev, "auc", ("A", "B"))
    assert claims_check.problems("ch", {"quick": False, "claims": [good]}) == []
    assert claims_check.problems("ch", {"quick": False, "claims": []}) == ["ch: no claims recorded"]
    wrong = good | {"verdict": NOT_REPRODUCED}
    assert "the rule gives 'reproduced'" in claims_check.problems("ch", {"claims": [wrong]})[0]
    one_seed = claim("B beats A.", ev | {"seeds": [0]}, "auc", ("A", "B"))
    assert "1 seed(s)" in claims_check.problems("ch", {"quick": False, "claims": [one_seed]})[0]
    assert claims_check.problems("ch", {"quick": True, "claims": [one_seed]}) == []   # QUICK may use 1 seed
    capped = claim("B beats A.", ev | {"stopped_by": {"A": ["epoch cap"], "B": ["early stopping"]}}, "auc", ("A", "B"))
    assert "not all by early stopping" in claims_check.problems("ch", {"quick": False, "claims": [capped]})[0]
    oracle = claim("A beats B.", ev | {"stopped_by": {"A": [NOT_TRAINED] * 3, "B": ["early stopping"] * 3}}, "auc",
                   ("B", "A"))
    assert claims_check.problems("ch", {"quick": False, "claims": [oracle]}) == []   # the oracle is not trained
    side = claim("B beats A.", ev | {"seeds": [0]}, "auc", ("A", "B"), headline=False)
    assert claims_check.problems("ch", {"quick": False, "claims": [side]}) == []


def test_a_fixed_budget_claim_may_stop_at_the_epoch_cap_and_still_needs_three_seeds():
    """A claim about a fixed-budget training curve states its budget; then epoch-cap runs pass."""
    import claims as claims_check  # tools/claims.py

    ev = {"delta": -0.01, "ci": [-0.016, -0.004], "seeds": [0, 1, 2], "n_test": 5000,
          "stopped_by": {"epoch 1": ["epoch cap"] * 3, "epoch 1.25": ["epoch cap"] * 3}}
    curve = claim("AUC drops after epoch 1.", ev, "auc", ("epoch 1", "epoch 1.25"), direction="less",
                  fixed_budget="3 epochs: the claim is about the curve past the peak")
    assert curve["fixed_budget"].startswith("3 epochs")
    assert claims_check.problems("ch", {"quick": False, "claims": [curve]}) == []
    unstated = claim("AUC drops after epoch 1.", ev, "auc", ("epoch 1", "epoch 1.25"), direction="less")
    assert "states its fixed_budget" in claims_check.problems("ch", {"quick": False, "claims": [unstated]})[0]
    one_seed = claim("AUC drops.", ev | {"seeds": [0]}, "auc", ("a", "b"), direction="less", fixed_budget="3 epochs")
    assert "1 seed(s)" in claims_check.problems("ch", {"quick": False, "claims": [one_seed]})[0]
    assert "fixed_budget" not in claim("B beats A.", ev, "auc", ("A", "B"), direction="less")


def test_fixed_arm_pairs_an_untrained_predictor_with_trained_arms():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600).astype(float)
    truth = y + rng.normal(scale=1.0, size=600)
    trained = _arm("model", y, [truth + rng.normal(scale=s, size=600) for s in (1.0, 1.2, 1.4)], [0, 1, 2])
    oracle = fixed_arm("oracle", truth, y, trained.seeds, metrics=("auc",))
    assert oracle.values("auc").tolist() == [roc_auc_score(y, truth)] * 3
    assert oracle.stop_reasons() == [NOT_TRAINED] * 3
    e = compare(oracle, trained, n_boot=200)
    assert e["delta"] < 0 and e["ci"][1] < 0           # the noisier model is below the truth
    with pytest.raises(ValueError, match="one shape"):
        fixed_arm("oracle", truth[:-1], y, [0])
    with pytest.raises(ValueError, match="seeds is empty"):
        fixed_arm("oracle", truth, y, [])


def test_restrict_scores_a_slice_of_the_test_rows():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400).astype(float)
    p = [y + rng.normal(scale=s, size=400) for s in (0.5, 2.0)]
    arm = _arm("a", y, p, [0, 1])
    mask = np.arange(400) % 3 == 0
    part = restrict(arm, mask, "a on the slice")
    assert part.name == "a on the slice" and len(part.labels) == mask.sum()
    assert part.values("auc").tolist() == [roc_auc_score(y[mask], q[mask]) for q in p]
    assert compare(part, part, n_boot=20)["n_test"] == mask.sum()
    with pytest.raises(ValueError, match="shape"):
        restrict(arm, mask[:-1])
    with pytest.raises(ValueError, match="no test row"):
        restrict(arm, np.zeros(400, dtype=bool))


def test_compare_spread_sees_a_scaled_spread_and_its_absence():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=200), 2.0 * rng.normal(size=200)
    e = compare_spread(a, b)
    assert e["delta"] == pytest.approx(b.std(ddof=1) / a.std(ddof=1) - 1)
    assert e["ci"][0] < e["delta"] < e["ci"][1] and e["ci"][0] > 0.5      # twice the spread: ratio - 1 near 1
    same = compare_spread(a, rng.normal(size=200))
    assert same["ci"][0] < 0 < same["ci"][1]
    with pytest.raises(ValueError, match="at least 3"):
        compare_spread([1.0, 2.0], b)
    with pytest.raises(ValueError, match="does not vary"):
        compare_spread([1.0, 1.0, 1.0], b)


def test_paired_samples_cancel_shared_drift():
    """Timings that drift together (load) give a tight paired interval where the unpaired one is wide."""
    rng = np.random.default_rng(0)
    load = rng.lognormal(0, 0.6, 8)                   # the machine's slowdown, shared by each A/B pair
    a, b = 2.0 * load * rng.lognormal(0, 0.02, 8), 1.0 * load * rng.lognormal(0, 0.02, 8)
    e = compare_paired_samples(a, b)
    assert e["delta"] == pytest.approx(-0.5, abs=0.03) and e["ci"][1] < -0.4, e
    assert verdict(e["ci"], "less") == REPRODUCED
    unpaired = compare_samples(a, b, "median_ratio")
    assert unpaired["ci"][1] - unpaired["ci"][0] > 3 * (e["ci"][1] - e["ci"][0])
    same = compare_paired_samples(a, a * rng.lognormal(0, 0.02, 8))
    assert same["ci"][0] < 0 < same["ci"][1]
    with pytest.raises(ValueError, match="equally long"):
        compare_paired_samples(a, b[:3])
    with pytest.raises(ValueError, match="positive"):
        compare_paired_samples(a, -b)


def test_restrict_takes_indices_as_well_as_a_mask():
    from ctrlib.experiment import restrict
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400).astype(float)
    preds = [y * 0.3 + rng.random(400) for _ in range(2)]
    arm = _arm("a", y, preds, [0, 1])
    mask = np.arange(400) < 150
    part = restrict(arm, mask, "a, first rows")
    assert part.name == "a, first rows" and part.seeds == [0, 1] and len(part.labels) == 150
    for run, p in zip(part.runs, preds):
        assert run.metrics["auc"] == pytest.approx(roc_auc_score(y[:150], p[:150]))
    assert restrict(arm, np.arange(400)).values("auc") == pytest.approx(arm.values("auc"))
    e = compare(part, restrict(_arm("b", y, [p + y for p in preds], [0, 1]), mask), n_boot=50)
    assert e["n_test"] == 150 and e["delta"] > 0
    with pytest.raises(ValueError, match="no test row"):
        restrict(arm, np.zeros(400, bool))


def test_difference_of_independent_deltas_adds_their_errors():
    from ctrlib.experiment import Z95, difference
    a = {"delta": 0.01, "ci": [0.01 - Z95 * 0.003, 0.01 + Z95 * 0.003], "seeds": [0, 1, 2], "n_test": 100,
         "stopped_by": {"x": ["early stopping"]}}
    b = {"delta": 0.05, "ci": [0.05 - Z95 * 0.004, 0.05 + Z95 * 0.004], "seeds": [0, 1, 2], "n_test": 200,
         "stopped_by": {"x": ["epoch cap"]}}
    e = difference(a, b, "off", "on")
    assert e["delta"] == pytest.approx(0.04)
    assert e["ci"] == pytest.approx([0.04 - Z95 * 0.005, 0.04 + Z95 * 0.005])
    assert e["seeds"] == [0, 1, 2] and e["n_test"] == 300
    assert e["stopped_by"] == {"off: x": ["early stopping"], "on: x": ["epoch cap"]}
    assert claim("the gain is larger with the mechanism on", e, "auc", ("off", "on"))["verdict"] == REPRODUCED

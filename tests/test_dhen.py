"""DHEN for conversion prediction: the interaction modules against naive formulas, the ensemble's
shapes, the conversion funnel's oracle, multi-task loss weighting and masks, per-task metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from ctrlib import metrics as M
from ctrlib.data import TensorData
from ctrlib.data.world.funnel import TASKS, TRUTH, ConversionFunnel
from ctrlib.experiment import run_arm, task_arms
from ctrlib.layers import CrossNet, FieldTokens, SequenceEncoder, next_action_loss
from ctrlib.models import DHEN, PLE, MMoE
from ctrlib.models.dhen import CrossModule, DHENLayer, DotModule, MLPModule, SelfAttentionModule
from ctrlib.train import TrainConfig, evaluate, fit, task_loss

B, M_FIELDS, D = 5, 4, 3


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its initial value, so that no term of a formula is trivially zero."""
    torch.manual_seed(1)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


@pytest.fixture
def x():
    return torch.randn(B, M_FIELDS, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ------------------------------------------------------------------ the interaction modules
def test_self_attention_module_matches_the_formula(x):
    m = _perturbed(SelfAttentionModule(M_FIELDS, D, num_out=2))
    out = torch.zeros(B, 2, D, dtype=torch.float64)
    for b in range(B):
        q, k, v = x[b] @ m.q.weight.T, x[b] @ m.k.weight.T, x[b] @ m.v.weight.T  # [m, D]
        h = torch.zeros(M_FIELDS, D, dtype=torch.float64)
        for i in range(M_FIELDS):
            scores = torch.stack([(q[i] * k[j]).sum() / D ** 0.5 for j in range(M_FIELDS)])
            h[i] = (torch.softmax(scores, 0)[:, None] * v).sum(0)
        out[b] = m.tokens.weight @ h                                              # W in R^{l x m}
    torch.testing.assert_close(m(x), out)


def test_dot_module_matches_the_formula(x):
    m = _perturbed(DotModule(M_FIELDS, D, num_out=M_FIELDS, hidden=(7,)))
    dots = torch.stack([sum(x[:, i, d] * x[:, j, d] for d in range(D))
                        for i in range(M_FIELDS) for j in range(i + 1, M_FIELDS)], 1)     # [B, m(m-1)/2]
    expected = m.mlp(torch.cat([dots, x.flatten(1)], 1)).view(B, M_FIELDS, D)
    torch.testing.assert_close(m(x), expected)


def test_cross_module_matches_dcn_v2_without_the_residual(x):
    m = _perturbed(CrossModule(M_FIELDS, D, num_out=M_FIELDS, rank=2))
    x0 = x.flatten(1)
    down, up = m.cross.weights[0]
    w = up.weight @ down.weight                                                   # U V^T
    expected = torch.stack([x0[b] * (w @ x0[b] + m.cross.biases[0]) for b in range(B)]).view(B, M_FIELDS, D)
    torch.testing.assert_close(m(x), expected)
    # with the residual (the CrossNet default) it is DCN-V2's x0 * (W x0 + b) + x0
    net = _perturbed(CrossNet(M_FIELDS * D, num_layers=1, version=2))
    torch.testing.assert_close(net(x0), x0 * (net.weights[0](x0) + net.biases[0]) + x0)


def test_mlp_module_is_an_mlp_over_the_flattened_list(x):
    m = _perturbed(MLPModule(M_FIELDS, D, num_out=2, hidden=(6,)))
    lin1, _, lin2 = m.mlp.net
    expected = (torch.relu(x.flatten(1) @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias).view(B, 2, D)
    torch.testing.assert_close(m(x), expected)


# ------------------------------------------------------------------ the ensemble
@pytest.mark.parametrize("ensemble", ["weighted_sum", "sum"])
def test_layer_is_layernorm_of_the_ensemble_plus_shortcut(x, ensemble):
    layer = _perturbed(DHENLayer(M_FIELDS, D, ("mlp", "dcn", "attention", "dot"), ensemble))
    outs = [m(x) for m in layer.interactions]
    w = torch.softmax(layer.weights, 0) if ensemble == "weighted_sum" else torch.ones(4, dtype=torch.float64)
    y = sum(wi * o for wi, o in zip(w, outs)) + x                                 # identity shortcut: l = m
    expected = F.layer_norm(y, (D,), layer.norm.weight, layer.norm.bias, layer.norm.eps)
    torch.testing.assert_close(layer(x), expected)
    assert layer.shortcut is None


def test_concat_ensemble_shapes_and_learned_shortcut(x):
    layer = _perturbed(DHENLayer(M_FIELDS, D, ("mlp", "attention", "dot"), "concat", num_out=2))
    assert layer.num_out == 6 and layer(x).shape == (B, 6, D)
    short = torch.einsum("lm,bmd->bld", layer.shortcut.weight, x)                # W_n X_n over the list axis
    y = torch.cat([m(x) for m in layer.interactions], 1) + short
    torch.testing.assert_close(layer(x), F.layer_norm(y, (D,), layer.norm.weight, layer.norm.bias, layer.norm.eps))
    # stacked, the next layer reads the 6 tokens
    second = DHENLayer(6, D, ("mlp", "dcn"), "concat", num_out=2).double()
    assert second(layer(x)).shape == (B, 4, D)


def test_layer_rejects_unknown_modules_and_modes():
    with pytest.raises(ValueError, match="unknown interaction modules"):
        DHENLayer(4, 3, ("mlp", "masknet"))
    with pytest.raises(ValueError, match="ensemble must be one of"):
        DHENLayer(4, 3, ("mlp",), "mean")


# ------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def world():
    return ConversionFunnel(n_users=300, n_items=120, n_advertisers=24, n_categories=6)


@pytest.fixture(scope="module")
def sample(world):
    return world.sample(40_000, seed=3)


def test_funnel_rates_nesting_and_oracle(world, sample):
    cfg = world.config
    for t, rate in zip(TASKS, (cfg.click_rate, cfg.cart_rate, cfg.checkout_rate)):
        assert abs(sample[TRUTH[t]].mean() - rate) < 0.25 * rate, (t, sample[TRUTH[t]].mean())
    assert (sample["cart"] <= sample["click"]).all() and (sample["checkout"] <= sample["cart"]).all()
    assert (sample["p_cart"] <= sample["p_click"]).all() and (sample["p_checkout"] <= sample["p_cart"]).all()
    # the stored probability is the one the labels were drawn from: calibrated in bins of p
    bins = np.quantile(sample["p_click"], [0, 0.5, 0.9, 1.0])
    for lo, hi in zip(bins[:-1], bins[1:]):
        rows = (sample["p_click"] >= lo) & (sample["p_click"] <= hi)
        assert abs(sample.loc[rows, "click"].mean() - sample.loc[rows, "p_click"].mean()) < 0.01


def test_funnel_is_seeded_and_sequences_are_padded(world, sample):
    again = world.sample(40_000, seed=3)
    assert np.array_equal(np.stack(again["onsite_items"]), np.stack(sample["onsite_items"]))
    assert not np.array_equal(world.sample(1000, seed=4)["item_id"], sample["item_id"][:1000])
    off = np.stack(sample["offsite_advertisers"])
    # left padding: once a row has an event, every later position has one too
    assert (np.diff((off > 0).astype(int), axis=1) >= 0).all()
    assert ((off > 0).sum(1) == 0).any() and (off > 0).all(1).any()


def test_control_world_removes_the_planted_interactions(world, sample):
    control = ConversionFunnel(world.config, interactions=False)
    d = control._draw(2000, np.random.default_rng(0))
    terms = control.logit_terms(d)
    for t in TASKS:
        assert set(terms[t]) > {"first"}
        assert all(np.all(v == 0) for k, v in terms[t].items() if k != "first"), t
    # and the off-site match carries checkout signal only where it is planted
    planted = M.auc(sample["checkout"], sample["offsite_match"])
    c = control.sample(40_000, seed=3)
    assert planted > 0.6 > M.auc(c["checkout"], c["offsite_match"]) - 0.05


def test_funnel_rejects_an_impossible_config():
    with pytest.raises(ValueError, match="funnel narrows"):
        ConversionFunnel(cart_rate=0.001, checkout_rate=0.003)
    with pytest.raises(ValueError, match="unknown labels"):
        ConversionFunnel().schema(labels=("purchase",))


# ------------------------------------------------------------------ models on the funnel
@pytest.fixture(scope="module")
def data(world, sample):
    schema = world.schema()
    return schema, TensorData.from_frame(sample.iloc[:4000], schema)


@pytest.mark.parametrize("cls", [DHEN, MMoE, PLE])
def test_multi_task_models_return_one_logit_per_task(data, cls):
    schema, td = data
    batch = next(td.batches(64))
    model = cls(schema, 4, (8,))
    out = model.eval()(batch)
    assert set(out) == set(TASKS) and all(v.shape == (64,) for v in out.values())
    single = cls(schema.__class__(schema.features, ("checkout",)), 4, (8,)).eval()
    assert single(batch).shape == (64,)


def test_field_tokens_encode_each_sequence_separately(data):
    schema, td = data
    batch = next(td.batches(16))
    tokens = FieldTokens(schema, 4)
    x, encoded = tokens(batch)
    assert x.shape == (16, 9 + 2, 4) and set(encoded) == {"onsite_items", "offsite_advertisers"}
    assert tokens.queries == {"onsite_items": "item_id", "offsite_advertisers": "advertiser_id"}
    # the off-site token changes when only the off-site sequence changes
    other = {**batch, "offsite_advertisers": torch.zeros_like(batch["offsite_advertisers"])}
    assert torch.allclose(tokens(other)[0][:, :-1], x[:, :-1])
    assert not torch.allclose(tokens(other)[0][:, -1], x[:, -1])


def test_sequence_encoder_is_causal():
    enc = SequenceEncoder(4)
    keys = torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    before = enc.states(keys, mask)
    changed = keys.clone()
    changed[:, 4:] = torch.randn(3, 2, 4)                                        # only the future moves
    after = enc.states(changed, mask)
    torch.testing.assert_close(after[:, :4], before[:, :4])
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_next_action_loss_rewards_predicting_the_next_action():
    keys = torch.randn(8, 5, 4)
    mask = torch.ones(8, 5, dtype=torch.bool)
    good = torch.cat([keys[:, 1:] * 5, torch.zeros(8, 1, 4)], 1)                  # h_t points at e_{t+1}
    assert next_action_loss(good, keys, mask) < next_action_loss(-good, keys, mask)
    assert next_action_loss(good, keys, torch.zeros_like(mask)) == 0             # no valid position


def test_dhen_adds_the_next_action_loss_in_training_only(data):
    schema, td = data
    batch = next(td.batches(32))
    model = DHEN(schema, 4, (8,), nal_weight=0.5, nal_sequence="onsite_items")
    out = model.train()(batch)
    states, keys, mask = model.fields(batch)[1]["onsite_items"]
    torch.testing.assert_close(out["aux_loss"], 0.5 * next_action_loss(states, keys, mask))
    assert "aux_loss" not in model.eval()(batch)


# ------------------------------------------------------------------ multi-task loss and metrics
def test_task_loss_weights_and_masks():
    g = torch.Generator().manual_seed(0)
    logits = {"click": torch.randn(10, generator=g), "checkout": torch.randn(10, generator=g)}
    batch = {"click": (torch.rand(10, generator=g) > 0.5).float(),
             "checkout": (torch.rand(10, generator=g) > 0.8).float(), "kept": torch.arange(10) < 4}
    bce = {k: F.binary_cross_entropy_with_logits(z, batch[k], reduction="none") for k, z in logits.items()}
    torch.testing.assert_close(task_loss(logits, batch), bce["click"].mean() + bce["checkout"].mean())
    torch.testing.assert_close(task_loss(logits, batch, {"checkout": 3.0}),
                               bce["click"].mean() + 3 * bce["checkout"].mean())
    torch.testing.assert_close(task_loss(logits, batch, masks={"checkout": "kept"}),
                               bce["click"].mean() + bce["checkout"][:4].mean())


def test_fit_uses_task_weights_masks_and_the_monitored_label(data):
    schema, td = data
    cfg = TrainConfig(epochs=1, batch_size=512, lr=1e-2, seed=0)

    def trained(**options):
        torch.manual_seed(0)
        model = DHEN(schema, 4, (8,), modules=("mlp",), depth=1)
        fit(model, td, td, cfg, **options)
        return model.towers["checkout"].net[0].weight.detach().clone()

    plain = trained()
    assert not torch.allclose(trained(task_weights={"checkout": 0.0}), plain)     # the weight reaches the loss
    masked = TensorData({**td.tensors, "none_kept": torch.zeros(len(td), dtype=torch.bool)})
    torch.manual_seed(0)
    model = DHEN(schema, 4, (8,), modules=("mlp",), depth=1)
    start = model.towers["checkout"].net[0].weight.detach().clone()
    fit(model, masked, td, cfg, task_masks={"checkout": "none_kept"})
    torch.testing.assert_close(model.towers["checkout"].net[0].weight, start)  # no label kept: no gradient
    result = fit(DHEN(schema, 4, (8,), modules=("mlp",), depth=1), td, td, cfg, monitor_label="cart")
    model_cart = DHEN(schema, 4, (8,), modules=("mlp",), depth=1)
    assert "valid_auc" in result.history and evaluate(model_cart, td, label="cart").keys() == {"auc", "logloss"}
    with pytest.raises(KeyError, match="not labels of the model"):
        fit(model, td, td, cfg, task_weights={"purchase": 1.0})
    with pytest.raises(KeyError, match="lacks the task_masks columns"):
        fit(model, td, td, cfg, task_masks={"checkout": "nope"})


def test_evaluate_scores_the_named_label(data):
    schema, td = data
    model = DHEN(schema, 4, (8,), modules=("mlp",), depth=1).eval()
    p = model(dict(td.tensors))
    for t in TASKS:
        expected = M.auc(td[t].numpy(), torch.sigmoid(p[t]).detach().numpy())
        assert evaluate(model, td, ("auc",), label=t)["auc"] == pytest.approx(expected)


def test_per_task_metrics():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.05).astype(float)
    p = np.clip(0.05 + 0.1 * y * rng.random(2000), 1e-4, 1)
    assert M.pr_auc(y, p) == pytest.approx(average_precision_score(y, p))
    base = np.full_like(p, y.mean())
    assert M.normalized_entropy(y, base) == pytest.approx(1.0, abs=1e-6)          # the base rate scores 1
    assert M.normalized_entropy(y, p) < 1
    assert M.compute(y, p, metrics=("pr_auc", "ne")).keys() == {"pr_auc", "ne"}
    with pytest.raises(ValueError, match="at least one positive"):
        M.pr_auc(np.zeros(5), np.ones(5) / 2)
    with pytest.raises(ValueError, match="both labels"):
        M.normalized_entropy(np.ones(5), np.ones(5) / 2)


def test_task_arms_score_every_task_of_one_training(data, sample):
    schema, td = data
    test = TensorData.from_frame(sample.iloc[4000:8000], schema)
    arm = run_arm("DHEN", lambda: DHEN(schema, 4, (8,), modules=("mlp",), depth=1), td, test, test,
                  TrainConfig(epochs=1, batch_size=512), [0, 1], keep_models=True)
    per_task = task_arms(arm, test, TASKS, metrics=("auc", "pr_auc", "ne"))
    assert set(per_task) == set(TASKS) and per_task["checkout"].seeds == [0, 1]
    for t in TASKS:
        run = per_task[t].runs[0]
        p = arm.runs[0].model.eval()(dict(test.tensors))[t]
        assert run.metrics["auc"] == pytest.approx(M.auc(test[t].numpy(), torch.sigmoid(p).detach().numpy()), abs=1e-6)
    arm.runs[0].model = None
    with pytest.raises(ValueError, match="keep_models=True"):
        task_arms(arm, test, TASKS)

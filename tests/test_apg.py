"""APG: the decomposed forward equals the naive one, merging over-parameterisation changes nothing,
conditions are shape-checked, wrapped base models train and are left unchanged, the static
alternative is what it says, and the scenario-groups knob works."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ctrlib.data import CTRWorld, TensorData
from ctrlib.models import DCN, DeepFM
from ctrlib.models.apg import APG, APGLinear, APGMLP, ConditionInMLP
from ctrlib.train import fit, seed_everything

B, N, M, D = 6, 12, 9, 5


def _randomise(module):
    """Move every parameter off its (structured) init so that the checks are not trivially true."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


@pytest.mark.parametrize("kw", [dict(rank=4), dict(rank=4, overparam=7), dict(rank=None),
                                dict(rank=3, share_uv=False), dict(rank=4, generate_bias=False),
                                dict(rank=4, hypernet_hidden=(8,))])
def test_decomposed_equals_naive_and_a_loop(kw):
    torch.manual_seed(0)
    layer = _randomise(APGLinear(N, M, D, **kw)).double()
    x, z = torch.randn(B, N, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    out = layer(x, z)
    assert out.shape == (B, M)
    torch.testing.assert_close(out, layer.forward_naive(x, z))
    # ... and a plain loop over instances, W_i = U S_i V built by hand
    g = layer.generate(z)
    for i in range(B):
        if layer.rank is None:
            W = g["W"][i]
        elif layer.share_uv:
            U, V = layer.shared_factors()
            W = U @ g["S"][i] @ V
        else:
            W = g["U"][i] @ g["S"][i] @ g["V"][i]
        b = g["b"][i] if layer.generate_bias else layer.bias
        torch.testing.assert_close(out[i], x[i] @ W + b)


def test_instances_get_different_weights_and_same_condition_same_weights():
    torch.manual_seed(0)
    layer = _randomise(APGLinear(N, M, D, rank=4))
    z = torch.randn(2, D)
    W = layer.weights(torch.cat([z, z[:1]]))
    assert W.shape == (3, N, M)
    assert not torch.allclose(W[0], W[1]) and torch.allclose(W[0], W[2])


def test_generator_starts_at_identity_core():
    layer = APGLinear(N, M, D, rank=4)
    S = layer.generate(torch.zeros(3, D))["S"]
    torch.testing.assert_close(S, torch.eye(4).expand(3, 4, 4))


def test_merged_overparameterisation_equals_unmerged():
    torch.manual_seed(1)
    mlp = _randomise(APGMLP(N, (10, 7), 1, condition_dim=D, rank=(4, 3), overparam=(8, 6))).double().eval()
    x, z = torch.randn(B, N, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    before = mlp(x, z)
    n_before = sum(p.numel() for p in mlp.parameters())
    mlp.merge_()
    assert all(not layer.overparameterised for layer in mlp.layers)
    torch.testing.assert_close(mlp(x, z), before)
    assert sum(p.numel() for p in mlp.parameters()) < n_before


def test_overparam_must_not_be_below_rank():
    with pytest.raises(ValueError, match="overparam"):
        APGLinear(N, M, D, rank=8, overparam=4)


def test_condition_shapes():
    torch.manual_seed(0)
    group = APGMLP(N, (8, 4), 1, condition_dim=D, rank=2)
    assert group(torch.randn(B, N), torch.randn(B, D)).shape == (B, 1)
    with pytest.raises(ValueError, match="condition"):
        group(torch.randn(B, N))
    with pytest.raises(RuntimeError):
        group(torch.randn(B, N), torch.randn(B, D + 1))  # wrong condition width
    selfwise = APGMLP(N, (8, 4), None, rank=2)  # self-wise: a drop-in for MLP
    assert selfwise(torch.randn(B, N)).shape == (B, 4)
    assert selfwise.layers[0].heads["S"].in_features == N and selfwise.layers[1].heads["S"].in_features == 8


@pytest.fixture(scope="module")
def scenario_data():
    world = CTRWorld(n_users=400, n_items=300, scenario_groups=4)
    df = world.sample(3000, seed=1)
    schema = world.schema(["user_id", "item_id", "category", "price", "device", "scenario"])
    return world, df, schema, TensorData.from_frame(df, schema)


@pytest.mark.parametrize("cond", [("scenario",), ("scenario", "device"), ()], ids=["group", "mix", "self"])
@pytest.mark.parametrize("base", [DeepFM, DCN])
def test_wrapped_models_condition_shapes_and_training(scenario_data, base, cond):
    _, _, schema, data = scenario_data
    seed_everything(0)
    model = APG(base(schema, embedding_dim=4, hidden=(16, 8)), condition_features=cond, rank=3, overparam=6)
    batch = next(data.batches(32))
    z = model.condition(batch)
    if cond:
        assert z.shape == (32, 8 * len(cond))
    else:
        assert z is None
    assert model(batch).shape == (32,)
    res = fit(model, data, epochs=2, batch_size=256, progress=False)
    assert res.history.train_loss.iloc[-1] < res.history.train_loss.iloc[0]
    model.eval()
    before = model(batch)
    model.merge_()
    torch.testing.assert_close(model(batch), before)


def test_apg_model_same_seed_same_numbers(scenario_data):
    _, _, schema, data = scenario_data
    outs = []
    for _ in range(2):
        seed_everything(3)
        model = APG(DeepFM(schema, embedding_dim=4, hidden=(8,)), rank=2)
        fit(model, data, epochs=1, batch_size=512, progress=False)
        outs.append(model(next(data.batches(64))).detach())
    torch.testing.assert_close(outs[0], outs[1])


def test_apg_rejects_unknown_condition(scenario_data):
    _, _, schema, _ = scenario_data
    with pytest.raises(KeyError):
        APG(DeepFM(schema, embedding_dim=4, hidden=(8,)), condition_features=("nope",))


def test_scenario_knob_default_off_and_planted_term(scenario_data):
    world, df, schema, _ = scenario_data
    plain = CTRWorld(n_users=400, n_items=300)
    ref = plain.sample(3000, seed=1)
    assert "scenario" not in ref and "z_scenario" not in ref and "scenario" not in plain.vocab_sizes()
    # the knob adds a column and a term but leaves every other column as it was
    cols = [c for c in ref.columns if c not in ("label", "true_p", "true_logit")]
    pd.testing.assert_frame_equal(df[cols], ref[cols])
    assert df.scenario.between(1, 4).all() and df.scenario.nunique() == 4
    np.testing.assert_allclose(df.filter(like="z_").sum(axis=1) + world.bias, df.true_logit)
    # group sizes fall with the group id (Zipf), the term is centred over groups
    sizes = np.bincount(world.user_scenario, minlength=4)
    assert sizes[0] == sizes.max()
    for t in world.w_scenario.values():
        np.testing.assert_allclose(t.mean(axis=0), 0, atol=1e-12)
    assert df.z_scenario.std() > 0.3
    assert schema["scenario"].vocab_size == 6


def test_per_instance_product_gradients():
    from ctrlib.models.apg import per_instance
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mats = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(per_instance, (h, mats))
    torch.testing.assert_close(per_instance(h, mats), torch.einsum("bn,bnm->bm", h, mats))


def test_apg_wraps_din_head():
    from ctrlib.models.din import DIN
    world = CTRWorld(n_users=200, n_items=150, history_len=6, scenario_groups=3)
    df = world.sample(1500, seed=2)
    schema = world.schema(["user_id", "item_id", "category", "scenario"])
    data = TensorData.from_frame(df, schema)
    seed_everything(0)
    model = APG(DIN(schema, embedding_dim=4, hidden=(12, 6)), condition_features=("scenario", "category"),
                rank=3, overparam=5)
    assert model.mlp.layers[0].in_dim == model.base.mlp.net[0].in_features and len(model.mlp.layers) == 2
    batch = next(data.batches(64))
    assert model(batch).shape == (64,)
    res = fit(model, data, epochs=2, batch_size=256, progress=False)
    assert np.isfinite(res.history.train_loss).all()
    model.eval()
    before = model(batch)
    torch.testing.assert_close(model.merge_()(batch), before)


def _snapshot(model):
    state = {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in model.state_dict().items()}
    return state, [(n, type(m)) for n, m in model.named_modules()]


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        if torch.is_tensor(v):
            torch.testing.assert_close(v, b[k], rtol=0, atol=0)
        else:
            assert v == b[k], k


@pytest.mark.parametrize("wrapper", [lambda b: APG(b, ("scenario",), rank=3, overparam=5),
                                     lambda b: APG(b, (), rank=3), lambda b: ConditionInMLP(b, ("scenario",))],
                         ids=["APG", "APG self-wise", "static"])
@pytest.mark.parametrize("base", [DeepFM, DCN])
def test_wrapping_leaves_the_base_model_unchanged(scenario_data, base, wrapper):
    """Composition: wrapping builds a new model around the base's parts; the base model given keeps
    its modules, its parameters and its forward, also after the wrapper has been called and trained."""
    _, _, schema, data = scenario_data
    seed_everything(0)
    plain = base(schema, embedding_dim=4, hidden=(16, 8)).eval()
    batch = next(data.batches(32))
    state, modules = _snapshot(plain)
    reference = copy.deepcopy(plain)
    out = plain(batch).detach()
    model = wrapper(plain)
    assert _snapshot(plain)[1] == modules
    _assert_same_state(plain.state_dict(), state)
    torch.testing.assert_close(plain(batch), out, rtol=0, atol=0)
    model(batch)
    assert model.mlp is not plain.mlp
    assert all(p is not q for p in model.mlp.parameters() for q in plain.mlp.parameters())
    assert not any(m is n for m in model.mlp.modules() for n in plain.mlp.modules())
    # the base MLP is never called by the wrapper: its parameters get no gradient
    fit(model, data, epochs=1, batch_size=512, progress=False)
    assert all(p.grad is None or not p.grad.any() for p in plain.mlp.parameters())
    _assert_same_state(plain.mlp.state_dict(), reference.mlp.state_dict())


@pytest.mark.parametrize("base", [DeepFM, DCN])
def test_wrapped_forward_with_the_base_mlp_equals_the_base_forward(scenario_data, base):
    """The wrapper's recipe of the base forward is the base forward: with the base's own MLP in
    place of the conditioned one it gives the base model's logits exactly."""
    from ctrlib.models.apg import _LOGITS
    _, _, schema, data = scenario_data
    seed_everything(0)
    plain = _randomise(base(schema, embedding_dim=4, hidden=(16, 8))).eval()
    batch = next(data.batches(64))
    torch.testing.assert_close(_LOGITS[base](plain, batch, plain.mlp), plain(batch), rtol=0, atol=0)


def test_condition_dim_none_uses_the_base_embedding_table(scenario_data):
    _, _, schema, data = scenario_data
    seed_everything(0)
    model = APG(DeepFM(schema, embedding_dim=4, hidden=(16, 8)), ("scenario", "device"), rank=3, condition_dim=None)
    assert model.condition_tables is None
    batch = next(data.batches(32))
    z = model.condition(batch)
    assert z.shape == (32, 2 * 4)
    torch.testing.assert_close(z[:, :4], model.base.embedding.lookup("scenario", batch["scenario"]))
    assert model(batch).shape == (32,)
    res = fit(model, data, epochs=2, batch_size=256, progress=False)
    assert res.history.train_loss.iloc[-1] < res.history.train_loss.iloc[0]


def test_wrappers_reject_unknown_bases_and_static_needs_a_condition(scenario_data):
    from ctrlib.models import FM
    _, _, schema, _ = scenario_data
    with pytest.raises(TypeError, match="DeepFM"):
        APG(FM(schema, embedding_dim=4), ("scenario",))
    with pytest.raises(ValueError, match="condition feature"):
        ConditionInMLP(DeepFM(schema, embedding_dim=4, hidden=(8,)), ())


def test_static_alternative_reads_the_condition_in_its_first_layer(scenario_data):
    """ConditionInMLP = the base MLP with [h, z_i] as input: same hidden widths, first layer wider
    by the condition width, and its output changes with the condition alone."""
    _, _, schema, data = scenario_data
    seed_everything(0)
    base = DeepFM(schema, embedding_dim=4, hidden=(16, 8))
    model = _randomise(ConditionInMLP(base, ("scenario",), condition_dim=5)).eval()
    linears = [m for m in model.mlp.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(base.mlp.net[0].in_features + 5, 16), (16, 8), (8, 1)]
    batch = next(data.batches(64))
    other = dict(batch, scenario=batch["scenario"] % 4 + 1)
    changed = batch["scenario"] != other["scenario"]
    assert changed.any()
    assert not torch.allclose(model(batch)[changed], model(other)[changed])
    assert model.condition_tables["scenario"].weight.std() > 0.5  # N(0, 1) init, as APG's


def test_din_recipe_with_the_base_mlp_equals_the_din_forward():
    from ctrlib.models.apg import _LOGITS
    from ctrlib.models.din import DIN
    world = CTRWorld(n_users=200, n_items=150, history_len=6, scenario_groups=3)
    schema = world.schema(["user_id", "item_id", "category", "scenario"])
    data = TensorData.from_frame(world.sample(500, seed=2), schema)
    seed_everything(0)
    din = _randomise(DIN(schema, embedding_dim=4, hidden=(12, 6))).eval()
    batch = next(data.batches(64))
    torch.testing.assert_close(_LOGITS[DIN](din, batch, din.mlp), din(batch), rtol=0, atol=0)

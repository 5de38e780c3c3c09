"""TARQ (ctrlib/models/tarq.py) and its pre-ranking world (ctrlib/data/world/preranking.py): the
quantizer, the losses against naive formulas, the many-query attention, the serving path against
the batched model, and the world's requests and exact oracle."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from ctrlib.data import TensorData
from ctrlib.data.world.preranking import ITEM_FIELDS, PreRankingConfig, PreRankingWorld
from ctrlib.layers import TargetAttention
from ctrlib.models import TARQ
from ctrlib.models.tarq import (ResidualQuantizer, alignment_loss, approximation_error, code_usage,
                                distillation_loss, symmetric_kl)

D, HIDDEN = 8, (16,)


@functools.cache
def _world() -> PreRankingWorld:
    return PreRankingWorld(PreRankingConfig(n_users=300, n_items=1_000, n_brands=120, history_len=12,
                                            candidates=5, seed=0))


@functools.cache
def _data():
    pw = _world()
    df = pw.sample(40, seed=1)
    schema = pw.schema()
    return df, schema, TensorData.from_frame(df, schema)


def _model(**kw):
    _, schema, _ = _data()
    torch.manual_seed(0)
    return TARQ(schema, D, HIDDEN, 8, item_features=ITEM_FIELDS, levels=2, codes=6, code_dim=8,
                attention_dim=8, **kw)


# ------------------------------------------------------------------ residual quantization
def test_quantizer_matches_a_naive_greedy_loop():
    torch.manual_seed(0)
    rq = ResidualQuantizer(5, levels=3, codes=4)
    with torch.no_grad():
        rq.codebooks.normal_()
    v = torch.randn(7, 5)
    out = rq(v)
    for b in range(len(v)):
        rest, total = v[b].clone(), torch.zeros(5)
        for level, C in enumerate(rq.codebooks.detach()):
            z = int(torch.argmin(((rest - C) ** 2).sum(1)))
            assert z == out.codes[b, level]
            torch.testing.assert_close(out.logits[b, level].detach(), -((rest - C) ** 2).sum(1))
            rest, total = rest - C[z], total + C[z]
        torch.testing.assert_close(out.quantized[b].detach(), total)


def _fitted_error(levels: int, v: torch.Tensor, steps: int = 300) -> float:
    torch.manual_seed(0)
    rq = ResidualQuantizer(v.shape[1], levels=levels, codes=8)
    with torch.no_grad():   # start from data points (a k-means-style start), so no code is dead
        rq.codebooks.copy_(v[torch.randperm(len(v))[:levels * 8]].view(levels, 8, -1) / levels)
    opt = torch.optim.Adam(rq.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        rq(v).loss.backward()
        opt.step()
    with torch.no_grad():
        return float((rq(v).quantized - v).pow(2).sum(1).mean())


def test_reconstruction_error_shrinks_with_levels():
    """Each level quantizes what the levels before it left: more levels, less error (trained by the
    chapter's codebook loss)."""
    v = torch.randn(400, 6, generator=torch.Generator().manual_seed(1))
    errors = [_fitted_error(L, v) for L in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.7 * errors[0], errors


def test_code_usage_counts_codes_per_level():
    codes = torch.tensor([[0, 3], [0, 3], [1, 3], [2, 3]])
    u = code_usage(codes, 4)
    assert u["level"] == [1, 2]
    assert u["utilisation"] == [0.75, 0.25]
    assert u["top_code"] == [0, 3] and u["top_share"] == [0.5, 1.0]
    p = np.array([0.5, 0.25, 0.25])
    assert math.isclose(u["entropy"][0], float(-(p * np.log(p)).sum()), rel_tol=1e-9)
    assert u["entropy"][1] == 0.0


# ------------------------------------------------------------------ the losses
def test_symmetric_kl_against_the_formula():
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(3, 5), -1), torch.softmax(torch.randn(3, 5), -1)
    e = 1e-8
    naive = [sum(float(p[b, k] * math.log((p[b, k] + e) / (q[b, k] + e)))
                 + float(q[b, k] * math.log((q[b, k] + e) / (p[b, k] + e))) for k in range(5)) for b in range(3)]
    torch.testing.assert_close(symmetric_kl(p, q), torch.tensor(naive), rtol=1e-5, atol=1e-6)
    assert float(symmetric_kl(p, p).abs().max()) < 1e-6


def test_alignment_loss_against_a_naive_loop():
    torch.manual_seed(1)
    B, L, K, A = 4, 3, 5, 6
    logits, X = torch.randn(B, L, K), torch.randn(B, L, K, A)
    codes, target = torch.randint(0, K, (B, L)), torch.randn(B, A)
    total = 0.0
    for b in range(B):
        r_bar = target[b].clone()
        for level in range(L):
            p = torch.softmax(logits[b, level], 0)
            p_bar = torch.softmax(-((r_bar - X[b, level]) ** 2).sum(1), 0)
            total += float(symmetric_kl(p, p_bar)) / B
            r_bar = r_bar - X[b, level, codes[b, level]]
    torch.testing.assert_close(alignment_loss(logits, X, codes, target), torch.tensor(total), rtol=1e-5, atol=1e-6)
    # the teacher side is a stopped target: no gradient reaches it
    target.requires_grad_(True)
    X.requires_grad_(True)
    alignment_loss(logits, X, codes, target).backward()
    assert target.grad is None and X.grad is not None


def test_distillation_loss_is_tf_l2_loss_over_the_batch():
    torch.manual_seed(2)
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    torch.testing.assert_close(distillation_loss(s, t), 0.5 * ((s - t) ** 2).sum() / 5)
    distillation_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_approximation_error_is_zero_for_a_perfect_student():
    h = torch.randn(6, 4)
    e = approximation_error(h, h.clone())
    assert e["mse"] == 0 and abs(e["cosine"] - 1) < 1e-6
    assert approximation_error(h, -h)["cosine"] < -0.99


# ------------------------------------------------------------------ many-query attention
def test_many_queries_equal_one_query_at_a_time():
    torch.manual_seed(0)
    att = TargetAttention(5, 7, 8, num_heads=2)
    q, k = torch.randn(3, 4, 5), torch.randn(3, 6, 7)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    out, w = att(q, k, mask)
    assert out.shape == (3, 4, 8) and w.shape == (3, 2, 4, 6)
    for j in range(4):
        one, wj = att(q[:, j], k, mask)
        torch.testing.assert_close(out[:, j], one)
        torch.testing.assert_close(w[:, :, j], wj)
    shared, _ = att(q[:1], k, mask)  # [1, Q, Dq]: the same queries for every sample
    for b in range(3):
        torch.testing.assert_close(shared[b], att(q[0].expand(3, -1, -1), k, mask)[0][b])


# ------------------------------------------------------------------ the model
def test_training_returns_the_aux_loss_and_eval_plain_logits():
    _, _, data = _data()
    batch = data.tensors
    model = _model()
    model.train()
    out = model(batch)
    assert set(out) == {"label", "aux_loss"} and out["label"].shape == (len(data),)
    out["aux_loss"].backward()
    assert model.quantizer.codebooks.grad is not None and model.teacher.q.weight.grad is not None
    assert len(model.usage) == 1 and set(model.usage_history()) >= {"step", "level", "utilisation"}
    model.eval()
    assert model(batch).shape == (len(data),)


def test_ablation_flags_remove_their_losses():
    _, _, data = _data()
    batch = data.tensors
    full, no_align, no_distil = _model(), _model(align_weight=0.0), _model(distil_weight=0.0)
    aux = [float(m.train()(batch)["aux_loss"].detach()) for m in (full, no_align, no_distil)]
    assert aux[1] < aux[0] and aux[2] < aux[0], aux   # same weights (seed 0), fewer non-negative terms


def test_lookup_scoring_equals_the_batched_student():
    """The serving path (user side once per request, L lookups + a sum + a dot per candidate) gives
    the batched model's scores; a broken table (the first level's codes shifted) does not."""
    df, _, data = _data()
    model = _model()
    with torch.no_grad():   # unit-scale embeddings: attended codewords that differ visibly
        model.backbone.embedding.weight.normal_()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):  # move away from the initialisation, so the codes and attention are not trivial
        opt.zero_grad()
        out = model(data.tensors)
        (torch.nn.functional.binary_cross_entropy_with_logits(out["label"], data["label"]) + out["aux_loss"]).backward()
        opt.step()
    rid = df.request_id.to_numpy()
    full = [r for r in np.unique(rid) if (rid == r).sum() == _world().config.candidates]
    rows = torch.from_numpy(np.stack([np.flatnonzero(rid == r) for r in full]))   # [R, M]
    with pytest.raises(RuntimeError, match="eval"):
        model.request_state({k: v[rows[:, 0]] for k, v in data.tensors.items()})
    model.eval()
    state = model.request_state({k: v[rows[:, 0]] for k, v in data.tensors.items()})
    index = model.index_items(data.tensors)
    with torch.no_grad():
        batched = model(data.tensors)[rows]
    assert state.by_combo is not None and index.combos is not None   # K^L = 36 combinations
    torch.testing.assert_close(model.score(state, index, rows), batched, rtol=1e-5, atol=1e-6)
    per_level = dataclasses.replace(state, by_combo=None)             # the L-lookups path
    torch.testing.assert_close(model.score(per_level, index, rows), batched, rtol=1e-5, atol=1e-6)
    assert len(torch.unique(index.codes[:, 0])) > 1, "the codes should differ between items"
    K = model.quantizer.codes
    index.codes[:, 0] = (index.codes[:, 0] + 1) % K                   # a broken index: level 1 shifted
    index.combos = (index.combos + K) % K ** 2
    for s in (state, per_level):
        assert float((model.score(s, index, rows) - batched).abs().max()) > 1e-4


def test_teacher_serving_equals_the_teacher_only_model():
    df, _, data = _data()
    model = _model(teacher_only=True)
    rid = df.request_id.to_numpy()
    full = [r for r in np.unique(rid) if (rid == r).sum() == _world().config.candidates]
    rows = torch.from_numpy(np.stack([np.flatnonzero(rid == r) for r in full]))
    model.eval()
    state = model.request_state({k: v[rows[:, 0]] for k, v in data.tensors.items()})
    assert state.table is None
    with torch.no_grad():
        batched = model(data.tensors)[rows]
    torch.testing.assert_close(model.score(state, model.index_items(data.tensors), rows), batched,
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the pre-ranking world
def test_requests_share_user_and_time_and_hold_the_candidates():
    df, _, _ = _data()
    g = df.groupby("request_id")
    assert (g.size() == _world().config.candidates).all()
    assert (g.user_id.nunique() == 1).all() and (g.timestamp.nunique() == 1).all()
    assert df.request_id.nunique() == 40


def test_the_brand_term_and_the_oracle_are_exact():
    df, schema, _ = _data()
    pw = _world()
    hist = np.stack(df.hist_brand.to_numpy())
    count = ((hist == df.brand.to_numpy()[:, None]) & (hist > 0)).sum(1)
    assert (count == df.brand_count.to_numpy()).all()
    np.testing.assert_allclose(df.z_brand, pw.config.brand_match * (1 - 2.0 ** -count))
    terms = df[[c for c in df.columns if c.startswith("z_")]].sum(axis=1) + pw.world.bias
    np.testing.assert_allclose(df.true_logit, terms, rtol=1e-9)
    np.testing.assert_allclose(df.true_p, 1 / (1 + np.exp(-df.true_logit)))
    # the history's brands are the brands of the history's items
    items = np.stack(df.hist_item_id.to_numpy())
    real = items > 0
    assert (hist[real] == pw.world.item_brand[items[real] - 1] + 1).all() and (hist[~real] == 0).all()
    assert "hist_brand" in schema.columns and schema["hist_brand"].table == "brand"


def test_the_brand_knob_changes_only_the_brand_term():
    """Turning the brand term off leaves the impressions alone (the knob draws nothing), and moves
    the click probabilities (the term is real)."""
    cfg = dict(n_users=300, n_items=1_000, n_brands=120, history_len=12, candidates=5, seed=0)
    on = PreRankingWorld(PreRankingConfig(**cfg)).sample(30, seed=2)
    off = PreRankingWorld(PreRankingConfig(**cfg, brand_match=0.0)).sample(30, seed=2)
    for col in ("user_id", "item_id", "timestamp", "z_interest", "z_history"):
        assert (on[col].to_numpy() == off[col].to_numpy()).all(), col
    assert (off.z_brand == 0).all() and not np.allclose(on.true_p, off.true_p)


def test_bad_knobs_fail_with_their_name():
    with pytest.raises(ValueError, match="candidates"):
        PreRankingConfig(candidates=0)
    with pytest.raises(ValueError, match="brand_match"):
        PreRankingConfig(brand_match=-1.0)

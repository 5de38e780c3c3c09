"""Diff-MSIN (issue 15): the synergy world, the text-embedding cache and the model's modules, each
against a naive formula or a property that a broken version would fail."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ctrlib.data import TensorData, split_by_time
from ctrlib.data.text import (CorruptEmbeddingCacheError, cache_key, movielens_item_texts, movielens_modal_tables,
                              text_embeddings)
from ctrlib.data.world.modalities import SynergyConfig, SynergyWorld
from ctrlib.experiment import train_and_evaluate
from ctrlib.layers import masked_softmax
from ctrlib.models import DiffMSIN
from ctrlib.models.diff_msin import CrossModalAttention, SRC, decoupling_loss, reverse_coefficients
from ctrlib.train import TrainConfig

B, D = 32, 8


@pytest.fixture(scope="module")
def world():
    return SynergyWorld(SynergyConfig(n_users=200, n_items=100, history_len=6, modal_dim=5, seed=3))


@pytest.fixture(scope="module")
def batch(world):
    df = world.sample(B, seed=1)
    return dict(TensorData.from_frame(df, world.schema()).tensors)


def tables(world):
    return {k: torch.from_numpy(v) for k, v in world.modal_tables().items()}


# ----------------------------------------------------------------------------------- the world
def test_world_oracle_is_the_planted_logit(world):
    df = world.sample(2_000, seed=2)
    cfg = world.config
    u, i = df.user_id.to_numpy() - 1, df.item_id.to_numpy() - 1
    t = (world.item_text[i] == world.user_text[u]).astype(float)
    g = (world.item_image[i] == world.user_image[u]).astype(float)
    s = (world.item_shared[i] == world.user_shared[u]).astype(float)
    z = (world.bias + world.b_user[u] + world.b_item[i] + cfg.synergy * t * g + cfg.additive * (t + g)
         + cfg.shared * s)
    np.testing.assert_allclose(df.true_logit, z)
    np.testing.assert_allclose(df.true_p, 1 / (1 + np.exp(-z)))
    assert abs(df.true_p.mean() - cfg.base_ctr) < 0.02


def test_additive_control_has_no_conjunction(world):
    add = SynergyWorld(SynergyConfig(**{**world.config.__dict__, "mode": "additive"}))
    df = add.sample(3_000, seed=2)
    one = df.m_text.astype(float) + df.m_image
    # the modal term is linear in the number of matches: both = 2 x one, none = 0
    per = df.groupby(one)["z_modal"].agg(["min", "max"])
    np.testing.assert_allclose(per["min"], per["max"])
    np.testing.assert_allclose(per.loc[2.0, "min"], 2 * per.loc[1.0, "min"])
    syn = world.sample(3_000, seed=2).pipe(lambda d: d.groupby(d.m_text.astype(float) + d.m_image)["z_modal"].max())
    assert syn.loc[2.0] > 2 * syn.loc[1.0]          # the synergy world's term is super-additive
    assert add.sample(10, seed=5).equals(add.sample(10, seed=5))  # same seed, same rows


def test_modal_tables_share_the_common_factor(world):
    t = world.modal_tables()
    assert t["text"].shape == t["image"].shape == (world.config.n_items + 2, world.config.modal_dim)
    assert not t["text"][0].any() and not t["text"][-1].any()      # padding and OOV rows are zero
    # the text and image vectors of two items agree more often in direction when they share the common factor
    same = world.item_shared[:, None] == world.item_shared[None, :]
    sim_t = np.corrcoef(t["text"][1:-1])
    sim_g = np.corrcoef(t["image"][1:-1])
    agree = (np.sign(sim_t) == np.sign(sim_g))
    assert agree[same].mean() > agree[~same].mean()


def test_world_rejects_impossible_knobs():
    with pytest.raises(ValueError, match="n_items"):
        SynergyConfig(n_items=10)   # 4 x 4 x 3 combinations need 48 items
    with pytest.raises(ValueError, match="mode"):
        SynergyConfig(mode="xor")


# ------------------------------------------------------------------------------------ modules
def test_cross_modal_attention_matches_a_naive_loop():
    torch.manual_seed(0)
    ci = CrossModalAttention(4, pairs=3)
    with torch.no_grad():
        ci.gamma.uniform_(0.5, 1.5)
    x, y = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)   # the second: empty history
    out = ci(x, y, mask)
    for b in range(2):
        for p in range(3):
            q, k, v = (z @ ci.w[c, p] for c, z in enumerate((x[b, p], y[b, p], y[b, p])))
            w = masked_softmax(q @ k.T / 2.0, mask[b].expand(5, 5))
            torch.testing.assert_close(out[b, p], ci.gamma[p] * (w @ v) + x[b, p])
    torch.testing.assert_close(out[1], x[1])                                      # nothing to attend to


def test_src_with_zero_steps_is_the_identity_path():
    h, mask = torch.randn(3, 3, 5, D), torch.ones(3, 5, dtype=torch.bool)
    src = SRC(D, 3, steps=0).train()
    torch.testing.assert_close(src.refine(h, mask), h)
    assert SRC(D, 3, steps=2).train().refine(h, mask).sub(h).abs().max() > 1e-3   # T > 0 changes it


def test_src_noise_only_in_training_unless_released():
    h, mask = torch.randn(3, 3, 5, D), torch.ones(3, 5, dtype=torch.bool)
    src = SRC(D, 3, steps=2).eval()
    torch.testing.assert_close(src(h, mask), src(h, mask))
    src.noise_at_eval = True
    assert not torch.allclose(src(h, mask), src(h, mask))


def test_reverse_coefficients_fix_the_off_by_one():
    """The note's numbers for T = 12: corrected 0.12-0.68 at every step; released ~138 at t = 0."""
    bar = [math.cos(x) ** 2 for x in np.linspace(0, 0.9 * math.pi / 2, 13)]
    alpha, fixed = reverse_coefficients(12)
    _, released = reverse_coefficients(12, released=True)
    for t in range(12):
        a = bar[t + 1] / bar[t]
        assert abs(alpha[t].item() - a) < 1e-12
        assert abs(fixed[t].item() - (1 - a) / math.sqrt(1 - bar[t + 1])) < 1e-12
        assert abs(released[t].item() - (1 - a) / max(math.sqrt(1 - bar[t]), 1e-4)) < 1e-9
    assert 0.1 < fixed.min() and fixed.max() < 0.7
    assert 130 < released[0] < 145 and released[1:].max() < 0.7


def test_decoupling_loss_is_the_mean_pairwise_cosine():
    u = torch.randn(4, 5, 6)
    naive = np.mean([torch.cosine_similarity(u[b, i], u[b, j], 0).item()
                     for b in range(4) for i in range(5) for j in range(i + 1, 5)])
    assert abs(decoupling_loss(u).item() - naive) < 1e-6
    same = torch.ones(2, 3, 4)
    assert abs(decoupling_loss(same).item() - 1) < 1e-6


# -------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("options, fields", [({}, 5), ({"common_expert": False}, 4), ({"fdaf": "mean"}, 5),
                                             ({"released_channels": True}, 5), ({"shared_cross_attention": True}, 5)])
def test_model_shapes(world, batch, options, fields):
    torch.manual_seed(0)
    model = DiffMSIN(world.schema(), D, (16,), modal_tables=tables(world), steps=2, **options)
    model.eval()
    assert model(batch).shape == (B,)
    assert model.interest_vectors(batch).shape == (B, fields, D)
    model.train()
    out = model(batch)
    assert out["label"].shape == (B,) and out["aux_loss"].shape == ()
    fields_, H, T, mask = model.channels(batch)
    assert H.shape == (B, 3, world.config.history_len, D) and T.shape == (B, 3, D)


def test_concat_fusion_is_din_over_all_views(world, batch):
    model = DiffMSIN(world.schema(), D, (16,), modal_tables=tables(world), fusion="concat").eval()
    assert model(batch).shape == (B,)
    assert model.attention.mlp.net[0].in_features == 4 * 3 * D      # [e; v; e - v; e * v] of 3 channels
    assert not hasattr(model, "src")


def test_extra_losses(world, batch):
    """λ_syn counts clicked samples only; the released sign is max(0, cos), ours 1 - cos."""
    torch.manual_seed(0)
    model = DiffMSIN(world.schema(), D, (16,), modal_tables=tables(world), steps=1, decouple_weight=0.0).train()
    no_clicks = {**batch, "label": torch.zeros(B)}
    torch.manual_seed(1)
    assert model(no_clicks)["aux_loss"].item() == 0.0
    clicks = {**batch, "label": torch.ones(B)}
    torch.manual_seed(1)
    ours = model(clicks)["aux_loss"].item()
    model.released_synergy_sign = True
    torch.manual_seed(1)
    released = model(clicks)["aux_loss"].item()
    # 0.05 * mean(1 - cos) and 0.05 * mean(max(0, cos)) add up to at least 0.05 (= 0.05 where every cos >= 0)
    assert ours >= 0 and released >= 0 and ours + released >= 0.05 - 1e-6 and ours != released
    model.decouple_weight, model.synergy_weight = 0.1, 0.0
    torch.manual_seed(1)
    assert 0 < model(clicks)["aux_loss"].item() <= 0.1 + 1e-6


def test_model_rejects_bad_modal_tables(world):
    with pytest.raises(ValueError, match="one row per item id"):
        DiffMSIN(world.schema(), D, modal_tables={"text": torch.zeros(7, 4)})
    with pytest.raises(ValueError, match="empty"):
        DiffMSIN(world.schema(), D, modal_tables={})
    with pytest.raises(ValueError, match="exactly two"):
        DiffMSIN(world.schema(), D, modal_tables={"text": tables(world)["text"]}, released_channels=True)


def test_same_seed_same_numbers_and_it_learns(world):
    df = world.sample(3_000, seed=4)
    data = [TensorData.from_frame(p, world.schema()) for p in split_by_time(df)]
    cfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, progress=False)

    def build():
        return DiffMSIN(world.schema(), D, (16,), modal_tables=tables(world), steps=1)

    a = train_and_evaluate(build, *data, cfg, seed=0)
    b = train_and_evaluate(build, *data, cfg, seed=0)
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.fit.history.train_loss.iloc[-1] < a.fit.history.train_loss.iloc[0]


# ------------------------------------------------------------------------- text-embedding cache
class FakeEncoder:
    """A tiny deterministic stand-in for the sentence model: counts its calls."""

    def __init__(self, fingerprint="fake-v1", dim=3):
        self.fingerprint, self.dim, self.calls = fingerprint, dim, 0

    def encode(self, texts):
        self.calls += 1
        return np.array([[len(t), t.count("a"), i] for i, t in enumerate(texts)], np.float32)[:, :self.dim]


def test_cache_is_reused_and_rebuilt_on_a_checksum_mismatch(tmp_path):
    enc = FakeEncoder()
    first = text_embeddings(["a cat", "a dog"], "titles", enc, tmp_path)
    again = text_embeddings(["a cat", "a dog"], "titles", enc, tmp_path)
    assert enc.calls == 1
    np.testing.assert_array_equal(first, again)
    text_embeddings(["a cat", "a bird"], "titles", enc, tmp_path)          # other texts: rebuilt
    assert enc.calls == 2
    other = FakeEncoder("fake-v2")
    text_embeddings(["a cat", "a bird"], "titles", other, tmp_path)        # another model: rebuilt
    assert other.calls == 1
    manifest = json.loads((tmp_path / "text_embeddings" / "titles.json").read_text())
    assert manifest["key"] == cache_key("fake-v2", ["a cat", "a bird"])
    assert not list((tmp_path / "text_embeddings").glob("*.tmp"))          # nothing half-written left


@pytest.mark.parametrize("damage", ["array bytes", "truncated array", "manifest", "missing array"])
def test_corrupt_cache_is_a_clear_error(tmp_path, damage):
    enc = FakeEncoder()
    text_embeddings(["a", "b", "c"], "titles", enc, tmp_path)
    folder = tmp_path / "text_embeddings"
    npy, manifest = folder / "titles.npy", folder / "titles.json"
    if damage == "array bytes":
        data = bytearray(npy.read_bytes())
        data[-1] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif damage == "truncated array":
        npy.write_bytes(npy.read_bytes()[:40])
    elif damage == "manifest":
        manifest.write_text("{not json")
    else:
        npy.unlink()
    with pytest.raises(CorruptEmbeddingCacheError, match="titles"):
        text_embeddings(["a", "b", "c"], "titles", enc, tmp_path)
    assert enc.calls == 1


def test_encoder_output_is_checked(tmp_path):
    class Broken(FakeEncoder):
        def encode(self, texts):
            return np.zeros((len(texts) + 1, 2))
    with pytest.raises(ValueError, match="shape"):
        text_embeddings(["a"], "x", Broken(), tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        text_embeddings(["a"], "../x", FakeEncoder(), tmp_path)


def test_movielens_views_are_aligned_by_item_id(tmp_path):
    class Items:
        items = pd.DataFrame({"item_id": [3, 1, 2], "title": ["C", "Aa", "B"], "year": [1995, 1980, None],
                              "genres": ["Drama", "Comedy|Drama", None]}).astype({"year": "Int64"})
    texts = movielens_item_texts(Items)
    assert texts == ["Aa. Comedy, Drama", "B", "C. Drama"]
    views = movielens_modal_tables(Items, FakeEncoder(), tmp_path)
    assert views["text"].shape == (5, 3) and not views["text"][0].any() and not views["text"][4].any()
    np.testing.assert_array_equal(views["text"][1], [len("Aa. Comedy, Drama"), 3, 0])   # item 1 = first text
    g = views["genre_year"]                      # genres [Comedy, Drama], then decades [-1, 1980, 1990]
    np.testing.assert_array_equal(g[1], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(g[2], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(g[3], [0, 1, 0, 0, 1])

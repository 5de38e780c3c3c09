"""The one-epoch chapter's library parts: the long-tail world and its oracle, contrastive ID
pre-training, embedding transfer with aligned ids, and the difference of paired changes."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctrlib.data.world.long_tail import LongTailConfig, LongTailWorld
from ctrlib.experiment import checkpoint_arm, compare, compare_changes
from ctrlib.models import DIN, ContrastiveID
from ctrlib.train import fit, seed_everything, transfer_embeddings

SMALL = dict(n_train_users=1500, n_valid_users=300, n_test_users=500, n_items=800, n_categories=20)


@pytest.fixture(scope="module")
def world():
    return LongTailWorld(LongTailConfig(**SMALL, seed=3))


def test_the_oracle_is_bayes_rule_for_one_positive_and_one_popular_negative(world):
    s = world.split("train")
    u, i = s["user_id"] - 1, s["item_id"] - 1                              # no filter: id = item + 1
    for k in range(0, len(u), 97):  # a naive loop over the formula
        c = world.item_category[i[k]]
        pop_c = world.popularity[world.item_category == c].sum()
        q = world.taste[u[k], c] * world.popularity[i[k]] / pop_c
        assert s["true_p"][k] == pytest.approx(q / (q + world.popularity[i[k]]), rel=1e-9)
    # it is calibrated: among rows it gives p, a share p are positives
    p, y = s["true_p"], s["label"]
    for lo, hi in ((0.0, 0.2), (0.4, 0.6), (0.8, 1.0)):
        at = (p >= lo) & (p < hi)
        se = np.sqrt(p[at].mean() * (1 - p[at].mean()) / at.sum())
        assert at.sum() > 100 and abs(y[at].mean() - p[at].mean()) < 4 * se, (lo, hi, y[at].mean(), p[at].mean())


def test_rows_users_and_the_long_tail(world):
    parts = {name: world.split(name) for name in ("train", "valid", "test")}
    users = {name: set(s["user_id"].tolist()) for name, s in parts.items()}
    assert not (users["train"] & users["test"]) and not (users["train"] & users["valid"])   # user-disjoint
    s = parts["train"]
    assert len(s["label"]) == 2 * SMALL["n_train_users"] and s["label"].mean() == 0.5
    assert (s["hist_item_id"][::2] == s["hist_item_id"][1::2]).all()          # positive and negative share it
    assert (s["user_id"][::2] == s["user_id"][1::2]).all()
    counts = np.bincount(np.concatenate([s["item_id"], s["hist_item_id"].ravel()]))
    assert counts[1] > 20 * np.median(counts[counts > 0])                     # the head is far above the tail
    again = LongTailWorld(LongTailConfig(**SMALL, seed=3)).split("train")
    assert all(np.array_equal(again[k], s[k]) for k in s)                     # seeded


def test_rare_items_filter_and_pretraining_users_leave_the_labelled_rows(world):
    base = world.split("train")
    wide = LongTailWorld(LongTailConfig(**SMALL, seed=3, n_pretrain_users=400))
    assert all(np.array_equal(wide.split("train")[k], base[k]) for k in base)
    assert len(wide.cooccurrence_pairs()) > len(world.cooccurrence_pairs()) + 300 * 5
    filtered = copy.deepcopy(world).filter_rare_items(5)
    f = filtered.split("train")
    counts = np.bincount(np.concatenate([base["item_id"], base["hist_item_id"].ravel()]) - 1,
                         minlength=SMALL["n_items"])
    rare = counts[base["item_id"] - 1] < 5
    oov = filtered.n_item_ids - 1
    assert rare.any() and (f["item_id"][rare] == oov).all() and (f["item_id"][~rare] < oov).all()
    assert filtered.schema["item_id"].vocab_size == filtered.n_item_ids < world.n_item_ids
    assert np.array_equal(f["true_p"], base["true_p"])                        # the truth does not change


def test_contrastive_loss_is_in_batch_infonce(world):
    pairs = world.cooccurrence_pairs()
    batch = next(pairs.batches(64))
    torch.manual_seed(0)
    model = ContrastiveID(world.schema, 8, temperature=0.2, init_std=1.0)
    loss = model(batch)["aux_loss"]
    e = model.embedding.table_weight("item_id")
    a, b = batch["item_id"], batch["context_item_id"]
    naive = 0.0
    for k in range(len(a)):
        scores = torch.stack([F.cosine_similarity(e[a[k]], e[b[j]], dim=0) / 0.2 for j in range(len(b))])
        naive = naive - torch.log_softmax(scores, 0)[k]
    assert loss.item() == pytest.approx(naive.item() / len(a), rel=1e-5)
    assert model.eval()(batch).shape == (64,)


def test_pretraining_through_fit_learns_co_engagement(world):
    pairs = world.cooccurrence_pairs()
    held, train = pairs.subset(torch.arange(1000)), pairs.subset(torch.arange(1000, len(pairs)))
    seed_everything(0)
    model = ContrastiveID(world.schema, 8)
    before = model.recall(held, k=10, candidates=256)
    result = fit(model, train, lambda m: {"recall": m.recall(held, k=10, candidates=256)}, epochs=3,
                 batch_size=256, lr=1e-3, monitor="recall")
    assert result.history.train_loss.iloc[-1] < result.history.train_loss.iloc[0]
    assert result.best_score > before + 0.1, (before, result.history.valid_recall.tolist())
    with pytest.raises(TypeError, match="validated by a function"):
        fit(model, train, world.tensors("valid"), epochs=1)


def test_transfer_keeps_ids_aligned(world):
    torch.manual_seed(0)
    source = ContrastiveID(world.schema, 8, init_std=1.0)
    target = DIN(world.schema, 8, (16,), attention="mean")
    users_before = target.embedding.table.table_weight("user_id").clone()
    assert transfer_embeddings(source, target) == ["item_id"]
    ids = torch.arange(world.n_item_ids)
    assert torch.equal(target.embedding.table.lookup("item_id", ids), source.embedding.lookup("item_id", ids))
    assert torch.equal(target.embedding.table.lookup("hist_item_id", ids), source.embedding.lookup("item_id", ids))
    assert torch.equal(target.embedding.table.table_weight("user_id"), users_before)
    other = LongTailWorld(LongTailConfig(**{**SMALL, "n_items": 700}, seed=3))
    with pytest.raises(ValueError, match="would not line up"):
        transfer_embeddings(ContrastiveID(other.schema, 8), target)
    with pytest.raises(KeyError, match="missing from the source"):
        transfer_embeddings(source, target, ["user_id"])


def _arm(name, rng, y, noise, seeds=(0, 1, 2)):
    runs = [(s, 1 / (1 + np.exp(-(2 * y - 1) * 0.8 - rng.normal(0, noise, len(y)))), None) for s in seeds]
    return checkpoint_arm(name, y, runs)


def test_compare_changes_is_the_difference_of_the_two_changes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    a0, a1, b0, b1 = (_arm(n, rng, y, s) for n, s in (("a0", 1.0), ("a1", 2.0), ("b0", 1.0), ("b1", 1.1)))
    e = compare_changes(a0, a1, b0, b1, n_boot=200)
    naive = (b1.values("auc") - b0.values("auc")) - (a1.values("auc") - a0.values("auc"))
    assert e["per_seed"] == pytest.approx(naive.tolist()) and e["delta"] == pytest.approx(naive.mean())
    assert e["ci"][0] > 0                                                      # b lost far less than a
    assert e["a"]["delta"] == pytest.approx(compare(a0, a1, n_boot=20)["delta"])
    same = compare_changes(a0, a1, a0, a1, n_boot=200)
    assert same["delta"] == 0 and same["ci"][0] <= 0 <= same["ci"][1]
    with pytest.raises(ValueError, match="seeds differ"):
        compare_changes(a0, a1, b0, _arm("b1", rng, y, 1.0, seeds=(0, 1, 5)))

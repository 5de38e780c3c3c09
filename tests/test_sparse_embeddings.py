"""Row-wise (sparse) embedding updates and the embedding L2 options of ``fit``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctrlib import fit
from ctrlib.data import Categorical, Schema, TensorData
from ctrlib.layers import FeatureEmbedding, lookup_rows, sparse_row_gradients
from ctrlib.models import DeepFM
from ctrlib.optim import LazyAdam, clip_grad_norm, prepare_table_grads, sum_duplicate_rows
from ctrlib.train import _embedding_tables

V, D = 50, 4


def _table(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(V, D))


def _step(table, optimizer, ids, target, sparse: bool, l2: float = 0.0, sparse_lookup: bool = True):
    """One step on  mean((E[ids] . 1 - target)^2)  + the batch-rows L2; ``sparse=False``: the row
    gradient is scattered into a dense one for dense Adam."""
    with sparse_row_gradients([table] if sparse_lookup else []):
        rows = lookup_rows(table, ids)  # [N, D]
    loss = (rows.sum(-1) - target).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    prepare_table_grads([table], l2, dense=not sparse)
    optimizer.step()


def test_lookup_rows_gives_sparse_gradients_only_inside_the_context():
    table = _table()
    ids = torch.tensor([[3, 1], [3, 7]])
    out = lookup_rows(table, ids)
    torch.testing.assert_close(out, F.embedding(ids, table), rtol=0, atol=0)
    out.sum().backward()
    assert not table.grad.is_sparse
    dense_grad, table.grad = table.grad, None
    with sparse_row_gradients([table]):
        out = lookup_rows(table, ids)
    out.sum().backward()  # the gradient's form is fixed when the lookup runs, not at backward
    assert table.grad.is_sparse
    torch.testing.assert_close(table.grad.to_dense(), dense_grad, rtol=0, atol=0)
    with torch.no_grad(), sparse_row_gradients([table]):
        assert not lookup_rows(table, ids).requires_grad


@pytest.mark.parametrize("rows", [10, 10_000], ids=["small table: scatter", "large table: sort"])
def test_sum_duplicate_rows_is_coalesce(rows):
    ids = torch.tensor([9, 2, 9, 0, 2, 9])
    values = torch.randn(6, D)
    grad = torch.sparse_coo_tensor(ids.unsqueeze(0), values, (rows, D), check_invariants=True)
    ours, torchs = sum_duplicate_rows(grad), grad.coalesce()
    assert ours.is_coalesced() and ours.shape == grad.shape
    assert torch.equal(ours._indices(), torchs._indices())
    torch.testing.assert_close(ours._values(), torchs._values())


def test_sum_duplicate_rows_gives_the_same_numbers_either_way():
    """The scatter (small tables) and the sort (large tables) add each row's entries in the same
    order: bit-identical sums, so the choice between them never changes a training run."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (4000,))
    values = torch.randn(4000, D)
    small = sum_duplicate_rows(torch.sparse_coo_tensor(ids.unsqueeze(0), values, (50, D), check_invariants=True))
    large = sum_duplicate_rows(torch.sparse_coo_tensor(ids.unsqueeze(0), values, (50 * 4000, D),
                                                       check_invariants=True))
    assert torch.equal(small._indices(), large._indices())
    assert torch.equal(small._values(), large._values())


def test_only_touched_rows_and_their_optimiser_state_change():
    """Step 1 touches rows A, step 2 rows B: after step 2 the rows of A - B (and their Adam moments) are
    bit-identical to what step 1 left, and never-touched rows are bit-identical to the start. Dense
    Adam moves A - B at step 2 (momentum): the perturbation this test would catch."""
    a, b = torch.tensor([1, 2, 3, 5, 5]), torch.tensor([3, 4, 8])
    only_a = torch.tensor([1, 2, 5])
    never = torch.tensor([r for r in range(V) if r not in {1, 2, 3, 4, 5, 8}])
    moved = {}
    for sparse in (True, False):
        table = _table()
        start = table.detach().clone()
        optimizer = LazyAdam([table], lr=0.1) if sparse else torch.optim.Adam([table], lr=0.1)
        _step(table, optimizer, a, torch.ones(len(a)), sparse, l2=0.3)
        after_1 = table.detach().clone()
        moments_1 = {k: optimizer.state[table][k].clone() for k in ("exp_avg", "exp_avg_sq")}
        _step(table, optimizer, b, torch.ones(len(b)), sparse, l2=0.3)
        assert not torch.equal(table[b], after_1[b])
        assert torch.equal(table[never], start[never])
        moved[sparse] = not torch.equal(table[only_a], after_1[only_a])
        if sparse:
            for k, m in moments_1.items():
                assert torch.equal(optimizer.state[table][k][only_a], m[only_a]), k
                assert not torch.equal(optimizer.state[table][k][b], m[b]), k
                assert torch.equal(optimizer.state[table][k][never], torch.zeros(len(never), D)), k
    assert moved == {True: False, False: True}


def test_lazy_adam_is_adam_when_every_row_is_touched():
    """A batch that lists every row exactly once: the same gradient both ways, and LazyAdam's row
    step does Adam's floating-point operations, so the tables are bit-identical after 5 steps."""
    tables = {True: _table(), False: _table()}
    optimizers = {True: LazyAdam([tables[True]], lr=0.05), False: torch.optim.Adam([tables[False]], lr=0.05)}
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids, target = torch.randperm(V, generator=g), torch.randn(V, generator=g)
        for sparse in (True, False):
            _step(tables[sparse], optimizers[sparse], ids, target, sparse, l2=0.1, sparse_lookup=sparse)
    assert torch.equal(tables[True], tables[False])
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizers[True].state[tables[True]][k], optimizers[False].state[tables[False]][k])


def test_lazy_adam_row_steps_of_changing_size_follow_the_rule():
    """Touched-row sets that grow past the reused buffers' capacity and shrink again: every step is
    the documented rule (each touched row: Adam's moments and update with the table's step count;
    untouched rows and moments unchanged), checked against a plain float64 transcription."""
    torch.manual_seed(3)
    table = torch.nn.Parameter(torch.randn(V, D, dtype=torch.float64))
    optimizer = LazyAdam([table], lr=0.05)
    e, m, v = table.detach().clone(), torch.zeros(V, D, dtype=torch.float64), torch.zeros(V, D, dtype=torch.float64)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, n in enumerate((3, 20, 7, V, 1, 35), 1):
        rows = torch.randperm(V)[:n].sort().values
        g = torch.randn(n, D, dtype=torch.float64)
        table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), g, (V, D), is_coalesced=True, check_invariants=True)
        optimizer.step()
        m[rows] = b1 * m[rows] + (1 - b1) * g
        v[rows] = b2 * v[rows] + (1 - b2) * g * g
        e[rows] -= 0.05 * (m[rows] / (1 - b1 ** t)) / ((v[rows] / (1 - b2 ** t)).sqrt() + eps)
        torch.testing.assert_close(table.detach(), e, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(optimizer.state[table]["exp_avg"], m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(optimizer.state[table]["exp_avg_sq"], v, rtol=1e-12, atol=1e-12)


def _small_world(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    schema = Schema((Categorical("user", 6), Categorical("item", 9)), ("label",))
    tensors = {"user": torch.randint(0, 6, (n,), generator=g), "item": torch.randint(0, 9, (n,), generator=g)}
    tensors["label"] = ((tensors["user"] + tensors["item"]) % 3 == 0).float()
    return schema, TensorData(tensors)


def _deepfm(schema):
    torch.manual_seed(0)
    return DeepFM(schema, 4, (8,))


def test_fit_sparse_and_dense_agree_when_every_batch_touches_every_row():
    """One batch per epoch holding every id: lazy Adam + batch-rows L2 and dense Adam + full-table L2
    are the same maths. Equal to float tolerance (not bitwise: a row hit many times sums its
    gradient in another order than index_select's backward)."""
    schema, data = _small_world()
    models = {}
    for update, rows in (("sparse", "batch"), ("dense", "all")):
        models[update] = _deepfm(schema)
        fit(models[update], data, None, epochs=4, batch_size=len(data), lr=0.01, embedding_l2=0.01,
            embedding_update=update, embedding_l2_rows=rows, grad_clip=1.0, progress=False)
    for (name, p), q in zip(models["sparse"].named_parameters(), models["dense"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_fit_sparse_leaves_untouched_rows_bit_identical():
    schema, data = _small_world()
    one_batch = data.subset(torch.nonzero(data["item"] < 5).squeeze(1)[:64])  # items 5..8 never looked up
    untouched = torch.arange(6 + 5, 6 + 9)  # their rows in the table (users come first)
    for update, rows, expect_same in (("sparse", "batch", True), ("dense", "all", False)):
        model = _deepfm(schema)
        before = [t.detach().clone() for t in _embedding_tables(model)]
        fit(model, one_batch, None, epochs=1, batch_size=len(one_batch), lr=0.01, embedding_l2=0.05,
            embedding_update=update, embedding_l2_rows=rows, progress=False)
        for old, new in zip(before, _embedding_tables(model)):
            assert torch.equal(old[untouched], new[untouched]) == expect_same, update
            assert not torch.equal(old[:6], new[:6])  # touched rows did move


def test_batch_rows_l2_penalises_exactly_the_touched_rows():
    table = _table()
    ids = torch.tensor([4, 4, 0, 9])
    with sparse_row_gradients([table]):
        lookup_rows(table, ids).sum().backward()
    penalty = prepare_table_grads([table], l2=0.2)
    touched = torch.tensor([0, 4, 9])
    expected = 0.1 * table.detach()[touched].pow(2).sum()
    torch.testing.assert_close(torch.tensor(penalty), expected)
    grad = table.grad.to_dense()
    loss_grad = torch.zeros(V, D).index_add_(0, ids, torch.ones(4, D))
    torch.testing.assert_close(grad[touched], loss_grad[touched] + 0.2 * table.detach()[touched])
    others = torch.tensor([r for r in range(V) if r not in {0, 4, 9}])
    assert torch.equal(grad[others], torch.zeros(len(others), D))


def test_reported_loss_holds_the_chosen_l2():
    """One step: the reported loss is the loss before the update, so the two differ by
    lambda/2 * ||E_r||^2 summed over the rows the batch does not touch."""
    schema, data = _small_world()
    one_batch = data.subset(torch.nonzero(data["item"] < 5).squeeze(1)[:64])
    losses = {}
    for rows in ("batch", "all"):
        model = _deepfm(schema)
        with torch.no_grad():  # rows of norm ~1, so that the penalty is far above float32 rounding of the loss
            for t in _embedding_tables(model):
                t.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
        untouched = sum(t.detach()[6 + 5:].pow(2).sum() for t in _embedding_tables(model))
        result = fit(model, one_batch, None, epochs=1, batch_size=64, lr=1e-3, embedding_l2=0.1,
                     embedding_l2_rows=rows, progress=False)
        losses[rows] = result.history["train_loss"].iloc[0]
    assert losses["all"] - losses["batch"] == pytest.approx(0.05 * float(untouched), rel=1e-5)


def test_full_table_l2_with_sparse_updates_moves_every_row():
    """``embedding_l2_rows="all"`` gives every row a gradient each step: lazy Adam then updates them all."""
    schema, data = _small_world()
    one_batch = data.subset(torch.nonzero(data["item"] < 5).squeeze(1)[:64])
    model = _deepfm(schema)
    before = model.embedding.weight.detach().clone()
    fit(model, one_batch, None, epochs=1, batch_size=64, lr=0.01, embedding_l2=0.05, embedding_l2_rows="all",
        progress=False)
    assert not torch.equal(before[6 + 5:], model.embedding.weight.detach()[6 + 5:])


def test_clip_grad_norm_matches_torch_on_dense_and_sparse_gradients():
    torch.manual_seed(0)
    w, t = torch.nn.Parameter(torch.randn(3, 5)), _table()
    for sparse in (False, True):
        w.grad = torch.randn(3, 5, generator=torch.Generator().manual_seed(2)) * 10
        with sparse_row_gradients([t] if sparse else []):
            out = lookup_rows(t, torch.tensor([1, 1, 7]))
        t.grad = None
        (out.pow(2).sum() * 10).backward()
        prepare_table_grads([t])
        ours = clip_grad_norm([w, t], 1.0)
        if sparse:
            clipped_sparse = (w.grad.clone(), t.grad.to_dense())
        else:
            clipped_dense = (w.grad.clone(), t.grad.clone())
            w.grad = torch.randn(3, 5, generator=torch.Generator().manual_seed(2)) * 10
            t.grad = None
            (lookup_rows(t, torch.tensor([1, 1, 7])).pow(2).sum() * 10).backward()
            assert ours == torch.nn.utils.clip_grad_norm_([w, t], 1.0)
            torch.testing.assert_close((w.grad, t.grad), clipped_dense, rtol=0, atol=0)
    torch.testing.assert_close(clipped_sparse, clipped_dense)


def test_fit_rejects_unknown_update_options():
    schema, data = _small_world()
    with pytest.raises(ValueError, match="embedding_update"):
        fit(_deepfm(schema), data, None, epochs=1, embedding_update="lazy", progress=False)
    with pytest.raises(ValueError, match="embedding_l2_rows"):
        fit(_deepfm(schema), data, None, epochs=1, embedding_l2_rows="touched", progress=False)


def test_feature_embedding_lookups_follow_the_context():
    schema, data = _small_world(8)
    emb = FeatureEmbedding(schema, 3)
    with sparse_row_gradients([emb.weight]):
        out = emb(data.tensors)
    out.sum().backward()
    assert emb.weight.grad.is_sparse

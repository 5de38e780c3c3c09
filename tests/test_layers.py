"""Each layer against a naive loop that follows the paper's equation literally."""
import itertools

import torch

from ctrlib.data import Categorical, Numeric, Schema, Sequence
from ctrlib.layers import (MLP, CrossNet, EmbeddingTable, FastDropout, FeatureEmbedding, LinearTerm, dot_interaction,
                           eval_mode, fm_interaction, lookup_rows, random_keep_mask)

torch.manual_seed(0)


def test_fm_interaction_equals_pairwise_loop():
    e = torch.randn(4, 5, 3)
    naive = torch.zeros(4)
    for i, j in itertools.combinations(range(5), 2):
        naive += (e[:, i] * e[:, j]).sum(-1)
    torch.testing.assert_close(fm_interaction(e), naive)


def test_dot_interaction_equals_pairwise_loop():
    e = torch.randn(3, 4, 2)
    naive = torch.stack([(e[:, i] * e[:, j]).sum(-1) for i, j in itertools.combinations(range(4), 2)], 1)
    torch.testing.assert_close(dot_interaction(e), naive)


def _naive_cross(net: CrossNet, x0: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x0:  # one sample at a time, the equations as written
        x = row.clone()
        for w, b in zip(net.weights, net.biases):
            if net.version == 1:  # x_{l+1} = x0 (x_l^T w_l) + b_l + x_l
                x = row * (x @ w.weight[0]) + b + x
            else:  # x_{l+1} = x0 * (W_l x_l + b_l) + x_l
                W = w.weight if isinstance(w, torch.nn.Linear) else w[1].weight @ w[0].weight
                x = row * (W @ x + b) + x
        out.append(x)
    return torch.stack(out)


def test_cross_net_versions_equal_naive_loop():
    x0 = torch.randn(5, 6)
    for kwargs in (dict(version=1), dict(version=2), dict(version=2, low_rank=2)):
        net = CrossNet(6, num_layers=3, **kwargs)
        for b in net.biases:
            torch.nn.init.normal_(b)
        torch.testing.assert_close(net(x0), _naive_cross(net, x0))


def test_cross_layer_degree_grows_by_one_per_layer():
    # With zero bias, an l-layer cross net on a scalar input is a polynomial of degree l + 1.
    net = CrossNet(1, num_layers=2, version=2)
    xs = torch.linspace(-2, 2, 9).unsqueeze(1)
    ys = net(xs).squeeze(1).detach()
    coeffs = torch.linalg.lstsq(torch.stack([xs.squeeze(1) ** k for k in range(5)], 1), ys.unsqueeze(1)).solution
    assert abs(coeffs[3].item()) > 1e-4 and abs(coeffs[4].item()) < 1e-4


def _schema():
    return Schema((Categorical("user", 5), Categorical("item", 7), Numeric("price"),
                   Sequence("hist", 7, 4, embedding="item")))


def test_feature_embedding_shares_tables_and_pools_sequences():
    schema = _schema()
    emb = FeatureEmbedding(schema, 3, init_std=1.0)
    assert emb.weight.shape == (5 + 7, 3)  # user rows + item rows; the history reuses item rows
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 0]), "price": torch.tensor([0.5, 2.0]),
             "hist": torch.tensor([[0, 0, 3, 4], [1, 2, 5, 6]])}
    out = emb(batch)
    assert out.shape == (2, 4, 3)
    item_rows = emb.weight[5:]
    torch.testing.assert_close(out[0, 1], item_rows[3])
    torch.testing.assert_close(out[0, 2], 0.5 * emb.numeric_weight[0])
    torch.testing.assert_close(out[0, 3], (item_rows[3] + item_rows[4]) / 2)  # padding ignored
    torch.testing.assert_close(out[1, 3], item_rows[[1, 2, 5, 6]].mean(0))


def test_linear_term_is_bias_plus_weights():
    lin = LinearTerm(_schema(), init_std=1.0)
    batch = {"user": torch.tensor([1]), "item": torch.tensor([2]), "price": torch.tensor([3.0]),
             "hist": torch.tensor([[0, 0, 0, 2]])}
    w = lin.weights.weight[:, 0]
    expected = lin.bias + w[1] + w[5 + 2] + 3.0 * lin.weights.numeric_weight[0, 0] + w[5 + 2]
    torch.testing.assert_close(lin(batch), expected.reshape(1))


def test_mlp_shapes():
    assert MLP(8, (16, 4), 1, dropout=0.1, batch_norm=True)(torch.randn(3, 8)).shape == (3, 1)
    assert MLP(8, (16, 4), None)(torch.randn(3, 8)).shape == (3, 4)


def test_random_keep_mask_keeps_one_minus_p_in_every_lane():
    # 16-bit lanes cut from 64-bit draws: a biased lane (e.g. a sign bit that is always 0) would
    # drop a quarter of the elements at the wrong rate
    torch.manual_seed(1)
    keep, keep_prob = random_keep_mask((400_000,), 0.2)
    assert keep.dtype == torch.bool and abs(keep_prob - 0.8) < 1 / 65536
    per_lane = keep.view(-1, 4).float().mean(0)  # 100k draws each: std of a rate ~0.0013
    assert ((per_lane - keep_prob).abs() < 0.006).all(), per_lane


def test_fast_dropout_is_inverted_dropout():
    drop = FastDropout(0.3)
    x = torch.ones(1000, 100, requires_grad=True)
    torch.manual_seed(2)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - round(0.3 * 65536) / 65536)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask)/dx = mask
    torch.manual_seed(2)
    torch.testing.assert_close(drop(x), y)  # the seed fixes the mask
    drop.eval()
    assert drop(x) is x


def test_lookup_rows_equals_f_embedding():
    w, ids = torch.randn(10, 3, requires_grad=True), torch.tensor([[1, 4, 4], [0, 9, 1]])
    torch.testing.assert_close(lookup_rows(w, ids), torch.nn.functional.embedding(ids, w))
    lookup_rows(w, ids).sum().backward()
    assert w.grad[4].eq(2).all() and w.grad[2].eq(0).all()  # one gradient per lookup, none elsewhere


def test_embedding_table_is_nn_embedding_with_the_same_numbers():
    """Same init under the same seed, same rows, same padding semantics (the value is returned,
    lookups give the padding row no gradient)."""
    torch.manual_seed(3)
    ref = torch.nn.Embedding(12, 4, padding_idx=0)
    torch.manual_seed(3)
    table = EmbeddingTable(12, 4, padding_idx=0)
    assert torch.equal(table.weight, ref.weight) and table.weight[0].eq(0).all()
    with torch.no_grad():
        table.weight.normal_()  # a nonzero padding row, as after the generative rankers' re-init
        ref.weight.copy_(table.weight)
    ids = torch.tensor([[0, 3, 3, 7], [0, 0, 5, 11]])
    out, expected = table(ids), ref(ids)
    torch.testing.assert_close(out, expected)
    (out * torch.arange(4.0)).sum().backward()
    (expected * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(table.weight.grad, ref.weight.grad)
    assert table.weight.grad[0].eq(0).all()
    torch.manual_seed(5)
    plain = EmbeddingTable(12, 4).weight  # no padding row
    torch.manual_seed(5)
    assert torch.equal(plain, torch.nn.Embedding(12, 4).weight)


def test_eval_mode_restores_every_submodule():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3))
    model.train()
    model[1].eval()  # a mixed state: model.train(was) would not restore it
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training

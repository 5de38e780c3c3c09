"""Behaviour layers against naive loops; two-tower, DIN and DIEN: shapes, overfit, the aux-loss hook."""
import math

import pytest
import torch
import torch.nn.functional as F

from ctrlib import fit, seed_everything
from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.layers import (ActivationUnit, Dice, TargetAttention, attention_pooling, masked_mean,
                           masked_softmax)
from ctrlib.models import DIEN, DIN, TwoTower
from ctrlib.models.dien import AUGRUCell, auxiliary_loss, run_gru, run_gru_fused
from helpers import assert_memorises

torch.manual_seed(0)


def _mask(B=5, L=6):
    lengths = torch.tensor([0, 1, 3, 6, 4][:B])
    return torch.arange(L)[None, :] >= (L - lengths)[:, None]  # left padding


def test_dice_equals_its_equation_in_training_and_inference():
    d = Dice(4)
    torch.nn.init.uniform_(d.alpha, -1, 1)
    x = torch.randn(32, 4) * 3 + 1
    mean, var = x.mean(0), x.var(0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    torch.testing.assert_close(d(x), p * x + (1 - p) * d.alpha * x)
    d.eval()  # moving averages, not the batch
    rm, rv = d.bn.running_mean, d.bn.running_var
    p = torch.sigmoid((x - rm) / torch.sqrt(rv + 1e-8))
    torch.testing.assert_close(d(x), p * x + (1 - p) * d.alpha * x)
    y = torch.randn(3, 7, 4)  # 3-d input: statistics over every position
    d.train()
    torch.testing.assert_close(d(y), d(y.reshape(-1, 4)).reshape(3, 7, 4))


@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_activation_unit_equals_a_per_behaviour_loop(activation):
    unit = ActivationUnit(3, (8,), activation)
    q, k, mask = torch.randn(5, 3), torch.randn(5, 6, 3), _mask()
    k = k * mask.unsqueeze(-1)
    if activation == "dice":
        unit(q, k, mask)  # one training step moves the running statistics
        unit.eval()       # then per-position evaluation is independent of the batch
    w = unit(q, k, mask)
    for b in range(5):
        for j in range(6):
            x = torch.cat([k[b, j], q[b], k[b, j] - q[b], k[b, j] * q[b]])
            expected = unit.mlp(x.unsqueeze(0)).squeeze() if mask[b, j] else torch.tensor(0.0)
            torch.testing.assert_close(w[b, j], expected)


def test_pooling_helpers_equal_loops():
    k, mask = torch.randn(5, 6, 3), _mask()
    w = torch.randn(5, 6) * mask
    pooled, mean = attention_pooling(w, k), masked_mean(k, mask)
    for b in range(5):
        torch.testing.assert_close(pooled[b], sum(w[b, j] * k[b, j] for j in range(6)))
        real = [k[b, j] for j in range(6) if mask[b, j]]
        torch.testing.assert_close(mean[b], sum(real) / len(real) if real else torch.zeros(3))
    s = masked_softmax(torch.randn(5, 6), mask)
    assert torch.all(s[~mask] == 0) and torch.allclose(s[1:].sum(-1), torch.ones(4)) and s[0].sum() == 0


@pytest.mark.parametrize("heads", [1, 2])
def test_target_attention_equals_a_naive_loop(heads):
    att = TargetAttention(3, 5, dim=4, num_heads=heads)
    q, k, mask = torch.randn(5, 3), torch.randn(5, 6, 5), _mask()
    out, w = att(q, k, mask)
    assert out.shape == (5, 4) and w.shape == (5, heads, 6)
    dh = 4 // heads
    for b in range(5):
        heads_out = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            qv = att.q.weight[sl] @ q[b]
            real = [j for j in range(6) if mask[b, j]]
            scores = torch.stack([qv @ (att.k.weight[sl] @ k[b, j]) / math.sqrt(dh) for j in real]) if real else None
            weights = torch.softmax(scores, 0) if real else []
            head = sum((wj * (att.v.weight[sl] @ k[b, j]) for wj, j in zip(weights, real)), torch.zeros(dh))
            heads_out.append(head)
            for wj, j in zip(weights, real):
                torch.testing.assert_close(w[b, h, j], wj)
        torch.testing.assert_close(out[b], att.o(torch.cat(heads_out)))
    assert torch.all(w[~mask.unsqueeze(1).expand_as(w)] == 0)


def test_augru_cell_is_a_gru_at_full_attention_and_frozen_at_zero():
    cell, gru = AUGRUCell(3, 4), torch.nn.GRUCell(3, 4)
    # torch's GRUCell: h' = (1 - z) n + z h with gates ordered (r, z, n); the paper's u = 1 - z.
    with torch.no_grad():
        for ours, theirs in ((cell.x2h, (gru.weight_ih, gru.bias_ih)), (cell.h2h, (gru.weight_hh, gru.bias_hh))):
            wu, wr, wn = ours.weight.chunk(3)
            bu, br, bn = ours.bias.chunk(3)
            theirs[0].copy_(torch.cat([wr, -wu, wn]))
            theirs[1].copy_(torch.cat([br, -bu, bn]))
    x, h = torch.randn(7, 3), torch.randn(7, 4)
    torch.testing.assert_close(cell(x, h, torch.ones(7)), gru(x, h))
    torch.testing.assert_close(cell(x, h, torch.zeros(7)), h)
    a = torch.rand(7)
    for b in range(7):  # one sample at a time, eqs. 2, 6, 7 as written
        Wx, Uh = cell.x2h.weight @ x[b] + cell.x2h.bias, cell.h2h.weight @ h[b] + cell.h2h.bias
        u = torch.sigmoid(Wx[:4] + Uh[:4])
        r = torch.sigmoid(Wx[4:8] + Uh[4:8])
        n = torch.tanh(Wx[8:] + r * Uh[8:])
        expected = (1 - a[b] * u) * h[b] + a[b] * u * n
        torch.testing.assert_close(cell(x[b:b + 1], h[b:b + 1], a[b:b + 1])[0], expected)


@pytest.mark.parametrize("augru", [False, True])
def test_masked_recurrence_equals_running_each_real_suffix(augru):
    cell = AUGRUCell(3, 4) if augru else torch.nn.GRUCell(3, 4)
    x, mask, a = torch.randn(5, 6, 3), _mask(), torch.rand(5, 6)
    states = run_gru(cell, x, mask, a if augru else None)
    for b in range(5):
        h = torch.zeros(1, 4)
        for t in range(6):
            if mask[b, t]:  # padding never touches the state
                h = cell(x[b, t:t + 1], h, a[b, t:t + 1]) if augru else cell(x[b, t:t + 1], h)
            torch.testing.assert_close(states[b, t], h[0])


def test_fused_gru_equals_the_masked_loop():
    gru, cell = torch.nn.GRU(3, 4, batch_first=True), torch.nn.GRUCell(3, 4)
    cell.load_state_dict({k[:-3]: v for k, v in gru.state_dict().items()})  # weight_ih_l0 -> weight_ih
    x, mask = torch.randn(5, 6, 3), _mask()
    torch.testing.assert_close(run_gru_fused(gru, x, mask), run_gru(cell, x, mask) * mask.unsqueeze(-1))


def test_auxiliary_loss_equals_a_loop():
    h, k, mask = torch.randn(5, 6, 3), torch.randn(5, 6, 3), _mask()
    total, n = 0.0, 0
    for b in range(5):
        for t in range(5):
            if mask[b, t] and mask[b, t + 1]:
                n += 1
                total = total - F.logsigmoid(h[b, t] @ k[b, t + 1])
                if mask[b - 1, t + 1]:  # the negative: the previous row's behaviour at t + 1
                    total = total - F.logsigmoid(-(h[b, t] @ k[b - 1, t + 1]))
    torch.testing.assert_close(auxiliary_loss(h, k, mask), total / n)


# ----------------------------------------------------------------------------- models
FIELDS = ["user_id", "age", "gender", "device", "item_id", "category", "price", "hour"]
ITEM = ["item_id", "category", "price"]
MODELS = {
    "din": lambda s: DIN(s, 8, (32,), attention="din"),
    "din_prelu": lambda s: DIN(s, 8, (32,), attention="din", activation="prelu"),
    "softmax": lambda s: DIN(s, 8, (32,), attention="softmax", num_heads=2),
    "mean": lambda s: DIN(s, 8, (32,), attention="mean"),
    "sum": lambda s: DIN(s, 8, (32,), attention="sum"),
    "two_tower": lambda s: TwoTower(s, 8, (32,), 16, item_features=ITEM),
    "dien": lambda s: DIEN(s, 8, hidden=(32,)),
    "dien_no_aux": lambda s: DIEN(s, 8, aux_weight=0.0, hidden=(32,)),
}


@pytest.fixture(scope="module")
def seq_data():
    world = CTRWorld(seed=0, n_users=150, n_items=120, history_len=6, history_match=2.0)
    df = world.sample(3000, seed=0)
    schema = world.schema(FIELDS)
    return schema, [TensorData.from_frame(d, schema) for d in split_by_time(df)]


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_tiny_batch_overfits(name, seq_data):
    schema, (train, _, _) = seq_data
    seed_everything(0)
    model = MODELS[name](schema)
    out = model(next(train.batches(64)))
    if name == "dien":  # training mode: logits and the auxiliary loss through the dict hook
        assert set(out) == {"label", "aux_loss"} and out["label"].shape == (64,) and out["aux_loss"].ndim == 0
    else:
        assert out.shape == (64,)
    assert_memorises(model, train, name)


def test_attention_weights_vanish_at_padding_and_pooling_flags_differ(seq_data):
    schema, (train, _, _) = seq_data
    batch = next(train.batches(32))
    batch["hist_item_id"][:4, :3] = 0  # force some padding
    batch["hist_category"][:4, :3] = 0
    mask = batch["hist_item_id"] > 0
    for attention in ("din", "softmax", "mean", "sum"):
        seed_everything(0)
        w = DIN(schema, 8, attention=attention).attention_weights(batch)
        assert w.shape == mask.shape and torch.all(w[~mask] == 0), attention
    seed_everything(0)
    w = DIEN(schema, 8).attention_weights(batch)
    assert torch.allclose(w.sum(1), torch.ones(32)) and torch.all(w[~mask] == 0)
    with pytest.raises(ValueError, match="attention must be"):
        DIN(schema, 8, attention="max")


def test_two_tower_logit_is_a_dot_product_of_towers(seq_data):
    schema, (train, _, _) = seq_data
    seed_everything(0)
    model = TwoTower(schema, 8, (16,), 4, item_features=ITEM)
    batch = next(train.batches(16))
    u, v = model.towers(batch)
    torch.testing.assert_close(model(batch), (u * v).sum(1) + model.bias)
    other = dict(batch, item_id=batch["item_id"].flip(0), category=batch["category"].flip(0),
                 price=batch["price"].flip(0))
    torch.testing.assert_close(model.towers(other)[0], u)  # the user vector ignores the candidate
    with pytest.raises(KeyError):
        TwoTower(schema, item_features=["nope"])


def test_dien_same_seed_same_numbers(seq_data):
    schema, (train, valid, _) = seq_data
    runs = []
    for _ in range(2):
        seed_everything(3)
        model = DIEN(schema, 8, hidden=(16,))
        runs.append(fit(model, train, valid, epochs=1, batch_size=256).history.drop(columns="seconds"))
    assert runs[0].equals(runs[1])

"""TLSI (Time Matters): the time-world knob, timestamp features, time encoders, Time-LSTM, time-aware
attention, no leakage from the future."""
import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ctrlib import fit, seed_everything
from ctrlib.data import Categorical, CTRWorld, Schema, Sequence, TensorData, Timestamp
from ctrlib.data.clock import add_time_gaps, gap_bucket, hour_and_weekday
from ctrlib.data.sequences import build_behaviour_samples
from ctrlib.models import DIN
from ctrlib.models.tlsi import TLSI, TimeAwareAttention, TimeEncoder, TimeLSTM, TimeLSTMCell

FIELDS = ["age", "gender", "item_id", "category", "hour", "weekday"]


def small_world(**kw):
    cfg = dict(n_users=200, n_items=120, n_categories=8, n_days=20, history_len=12, history_match=0.5,
               behaviours_per_day=6, session_len=2, time_interests=2.0, time_events=1.5, cross2=0, cross3=0,
               request_size=4, seed=0)
    return CTRWorld(**{**cfg, **kw})


@functools.cache
def _world():
    return small_world()


def world_data(n=2000, seed=1):
    """The small time world (built once) and ``n`` impressions; callers must not modify them in place."""
    w = _world()
    df = w.sample(n, seed=seed)
    schema = time_schema(w)
    return w, df, schema, TensorData.from_frame(df, schema)


def time_schema(w):
    """The world's schema plus the prediction time and the behaviour times TLSI reads."""
    return w.schema(fields=FIELDS).add(Timestamp("timestamp"), Timestamp("hist_timestamp", w.config.history_len))


# ------------------------------------------------------------------ the simulator knob
def test_time_world_knob_is_off_by_default_and_planted_when_on():
    assert "z_time" not in CTRWorld(n_users=100, n_items=50).sample(500).columns
    w, df, _, _ = world_data()
    np.testing.assert_allclose(df.filter(like="z_").sum(axis=1) + w.bias, df.true_logit)
    assert df.z_time.std() > 0.5
    # The true click probability depends on the prediction time: same user and item, another hour.
    f = {"user": np.zeros(24, int), "category": np.full(24, int(np.argmax(w.affinity[0]))),
         "timestamp": np.arange(24) * 3600}
    z = w.time_term(f["user"], f["category"], f["timestamp"])
    assert z.max() - z.min() > 2.0
    peak = w._time["peak_hour"][0, f["category"][0]]
    assert abs((int(np.argmax(z)) - peak + 12) % 24 - 12) <= 1 or w._time["day_type"][0, f["category"][0]] == 2
    # Requests: runs of request_size impressions share the user and the prediction time.
    raw = w._draw(400, np.random.default_rng(0))
    assert (raw["user"].reshape(-1, 4) == raw["user"][::4, None]).all()
    assert (raw["timestamp"].reshape(-1, 4) == raw["timestamp"][::4, None]).all()


def test_behaviour_stream_follows_the_clock():
    w = small_world(n_users=400, behaviours_per_day=10)
    log = w._log
    a = w.interest_activation(log["user"], log["category"], log["timestamp"])
    on_interest = w.affinity[log["user"], log["category"]] > 0
    # Behaviours on an interest happen when that interest is active: far more than at random times.
    shuffled = np.random.default_rng(0).permutation(log["timestamp"])
    a_random = w.interest_activation(log["user"], log["category"], shuffled)
    assert a[on_interest].mean() > 1.3 * a_random[on_interest].mean()
    # During an event, everyone's behaviours lean to the event category.
    day = log["timestamp"] // 86_400
    ev = np.where((day >= 0) & (day < w.config.n_days),
                  w._time["event_category"][np.clip(day, 0, w.config.n_days - 1)], -1)
    share_in_event = (log["category"][ev >= 0] == ev[ev >= 0]).mean()
    assert share_in_event > 0.2


# ------------------------------------------------------------------ time encoders
def test_hour_weekday_and_gap_buckets():
    t = torch.tensor([0, 3599, 3600, 86_400 * 3 + 7200, -1, -86_400])
    hour, dow = hour_and_weekday(t)
    assert hour.tolist() == [0, 0, 1, 2, 23, 0] and dow.tolist() == [0, 0, 0, 3, 6, 6]
    gaps = torch.tensor([-5, 0, 59, 60, 180, 3600, 10 ** 9])
    assert gap_bucket(gaps).tolist() == [0, 0, 0, 1, 2, 5, 19]
    expected = [min(int(math.floor(math.log2(1 + max(g, 0) / 60))), 19) for g in gaps.tolist()]
    assert gap_bucket(gaps).tolist() == expected


def test_time_encoder_parts_and_ablations():
    torch.manual_seed(0)
    enc = TimeEncoder(8)
    t_star = torch.tensor([100_000, 500_000])
    t = torch.tensor([[90_000, 0], [499_000, 400_000]])
    tau = enc(t, t_star)
    assert tau.shape == (2, 2, 16)
    hour, dow = hour_and_weekday(t)
    np.testing.assert_allclose(tau[..., :4].detach(), enc.hour(hour).detach())
    np.testing.assert_allclose(tau[..., 4:8].detach(), enc.weekday(dow).detach())
    np.testing.assert_allclose(tau[..., 8:].detach(), enc.gap(gap_bucket(t_star[:, None] - t)).detach())
    # Shifting everything by a whole week changes nothing: the codes see only clock and distance.
    week = 7 * 86_400
    torch.testing.assert_close(enc(t + week, t_star + week), tau)
    no_p, no_tp = TimeEncoder(8, periodic=False), TimeEncoder(8, time_point=False)
    assert (no_p(t, t_star)[..., :8] == 0).all() and (no_tp(t, t_star)[..., 8:] == 0).all()
    with pytest.raises(ValueError, match="even"):
        TimeEncoder(7)


# ------------------------------------------------------------------ Time-LSTM
def naive_time_lstm_step(cell: TimeLSTMCell, x, delta, h, c):
    """The Time-LSTM equations, one sample at a time, with the weight matrices written out."""
    H = cell.hidden_dim
    W, b, U = cell.x_proj.weight, cell.x_proj.bias, cell.h_proj.weight
    sig = torch.sigmoid
    hs, cs = [], []
    for n in range(len(x)):
        pre = [W[k * H:(k + 1) * H] @ x[n] + b[k * H:(k + 1) * H] + U[k * H:(k + 1) * H] @ h[n] for k in range(4)]
        i, f, g, o = sig(pre[0]), sig(pre[1]), torch.tanh(pre[2]), pre[3]
        if cell.time_aware:
            T = sig(cell.x_time.weight @ x[n] + cell.x_time.bias + sig(cell.w_t.weight[:, 0] * delta[n]))
            c_new = f * c[n] + i * T * g
            o = sig(o + cell.v_o.weight[:, 0] * delta[n])
        else:
            c_new = f * c[n] + i * g
            o = sig(o)
        hs.append(o * torch.tanh(c_new))
        cs.append(c_new)
    return torch.stack(hs), torch.stack(cs)


@pytest.mark.parametrize("time_aware", [True, False])
def test_time_lstm_cell_matches_a_naive_step(time_aware):
    torch.manual_seed(0)
    cell = TimeLSTMCell(5, 4, time_aware)
    x, delta, h, c = torch.randn(3, 5), torch.rand(3) * 5, torch.randn(3, 4), torch.randn(3, 4)
    got = cell(x, delta, (h, c))
    want = naive_time_lstm_step(cell, x, delta, h, c)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_plain_cell_is_torch_lstm_cell():
    torch.manual_seed(0)
    cell, ref = TimeLSTMCell(5, 4, time_aware=False), torch.nn.LSTMCell(5, 4)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.x_proj.weight)
        ref.bias_ih.copy_(cell.x_proj.bias)
        ref.weight_hh.copy_(cell.h_proj.weight)
        ref.bias_hh.zero_()
    x, h, c = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, 4)
    for a, b in zip(cell(x, torch.rand(3), (h, c)), ref(x, (h, c))):
        torch.testing.assert_close(a, b)


def test_time_lstm_loop_ignores_left_padding_and_uses_gaps():
    torch.manual_seed(0)
    lstm = TimeLSTM(3, 4)
    x = torch.randn(1, 4, 3)
    t = torch.tensor([[0, 600, 4200, 90_000]])
    full = lstm(x, t, torch.ones(1, 4, dtype=torch.bool))
    padded_x = torch.cat([torch.randn(1, 2, 3), x], dim=1)
    padded_t = torch.cat([torch.tensor([[0, 0]]), t], dim=1)
    mask = torch.tensor([[False, False, True, True, True, True]])
    torch.testing.assert_close(lstm(padded_x, padded_t, mask), full)
    np.testing.assert_allclose(TimeLSTM.deltas(t, torch.ones(1, 4, dtype=torch.bool)),
                               np.log1p([[0, 10, 60, 1430]]), rtol=1e-6)
    # A Time-LSTM is not time-blind: other gaps, other state.
    assert not torch.allclose(lstm(x, t * 3, torch.ones(1, 4, dtype=torch.bool)), full)
    # Step by step by hand.
    h = c = torch.zeros(1, 4)
    d = TimeLSTM.deltas(t, torch.ones(1, 4, dtype=torch.bool))
    for k in range(4):
        h, c = naive_time_lstm_step(lstm.cell, x[:, k], d[:, k], h, c)
    torch.testing.assert_close(full, h)


# ------------------------------------------------------------------ time-aware attention
def test_time_aware_attention_matches_a_loop_and_masks_padding():
    torch.manual_seed(0)
    B, L, d = 3, 5, 4
    att = TimeAwareAttention(d, 2 * d)
    keys, target = torch.randn(B, L, d), torch.randn(B, d)
    tau_k, tau_q = torch.randn(B, L, 2 * d), torch.randn(B, 2 * d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    u, alpha = att(keys, target, mask, tau_k, tau_q)
    for b in range(B):
        s = []
        for j in range(L):
            feat = torch.cat([keys[b, j], target[b], keys[b, j] - target[b], keys[b, j] * target[b]])
            s.append(att.content.mlp(feat)[0] + att.w_q(tau_q[b]) @ att.w_k(tau_k[b, j]) / math.sqrt(d))
        s = torch.stack(s)
        real = mask[b]
        a = torch.zeros(L)
        if real.any():
            a[real] = torch.softmax(s[real], 0)
        torch.testing.assert_close(alpha[b], a)
        want = sum(a[j] * (keys[b, j] + att.w_v(tau_k[b, j])) for j in range(L))
        torch.testing.assert_close(u[b], want if real.any() else torch.zeros(d))
    assert (alpha[1, :2] == 0).all() and (alpha[2] == 0).all()


# ------------------------------------------------------------------ no leakage
def test_histories_hold_no_future_behaviour():
    _, _, _, data = world_data(3000)
    ts, hist_t, hist_i = data["timestamp"], data["hist_timestamp"], data["hist_item_id"]
    assert ((hist_t < ts[:, None]) | (hist_i == 0)).all()


def honest_histories(samples, log):
    return build_behaviour_samples(samples, _world().config.history_len, log, history_features=("category",))


def leaky_histories(samples, log):
    """A deliberately leaky builder: histories reach one day past the prediction time."""
    ahead = samples.assign(timestamp=samples.timestamp + 86_400)
    return honest_histories(ahead, log).assign(timestamp=samples.timestamp.to_numpy())


def scramble_future(log, t_star, rng):
    """The log with every behaviour at or after ``t_star`` replaced: other items, categories and
    times (still >= t*), plus a copy of each at exactly t*."""
    w, out = _world(), log.copy()
    future = (out.timestamp >= t_star).to_numpy()
    n = int(future.sum())
    out.loc[future, "item_id"] = rng.integers(1, w.config.n_items + 1, n)
    out.loc[future, "category"] = rng.integers(1, w.config.n_categories + 1, n)
    out.loc[future, "timestamp"] = t_star + rng.integers(0, 5 * 86_400, n)
    return pd.concat([out, out[future].assign(timestamp=t_star)], ignore_index=True)


def tlsi_outputs_before_and_after_changing_the_future(build_histories, n=48):
    """TLSI's logits for ``n`` impressions whose histories ``build_histories(samples, log)`` makes
    from the behaviour log, and the same after everything at or after each impression's own
    prediction time is scrambled in the log (:func:`scramble_future`)."""
    w, df, schema, _ = world_data(3000)
    log, rng = w.behaviour_log(), np.random.default_rng(0)
    rows = df.iloc[np.linspace(len(df) // 4, len(df) - 1, n).astype(int)]
    rows = rows[FIELDS + ["user_id", "timestamp", "label"]].reset_index(drop=True)
    seed_everything(0)
    model = TLSI(schema, 8, short_len=4).eval()
    as_batch = lambda frame: TensorData.from_frame(frame, schema).tensors  # noqa: E731
    true = as_batch(build_histories(rows, log))
    changed = as_batch(pd.concat([build_histories(rows.iloc[[i]], scramble_future(log, int(rows.timestamp[i]), rng))
                                  for i in range(n)], ignore_index=True))
    assert (true["hist_item_id"] > 0).sum(1).min() > 0, "the test needs impressions with a history"
    with torch.no_grad():
        return model(true), model(changed)


def test_changing_the_future_moves_nothing():
    before, after = tlsi_outputs_before_and_after_changing_the_future(honest_histories)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_the_future_check_catches_a_leaky_pipeline():
    before, after = tlsi_outputs_before_and_after_changing_the_future(leaky_histories)
    assert (after - before).abs().max() > 1e-3, "a history that sees a day ahead must move when the future changes"


# ------------------------------------------------------------------ the model
ABLATIONS = [dict(), dict(time_attention=False), dict(periodic=False), dict(time_point=False),
             dict(time_lstm=False), dict(gate=False), dict(short=False), dict(long=False)]


@pytest.mark.parametrize("flags", ABLATIONS, ids=lambda f: ",".join(f) or "full")
def test_tlsi_shapes_and_every_ablation_runs(flags):
    _, _, schema, data = world_data(600)
    seed_everything(0)
    model = TLSI(schema, 8, short_len=5, **flags)
    batch = next(data.batches(64))
    out = model(batch)
    assert out.shape == (64,) and torch.isfinite(out).all()
    out.sum().backward()
    if model.long:
        alpha = model.attention_weights(batch)
        real = batch["hist_item_id"] > 0
        assert (alpha[~real] == 0).all()
        np.testing.assert_allclose(alpha.sum(1)[real.any(1)], 1, rtol=1e-5)


def test_tlsi_needs_a_module_and_handles_empty_histories():
    _, _, schema, data = world_data(300)
    with pytest.raises(ValueError, match="long-term module"):
        TLSI(schema, long=False, short=False)
    batch = {k: v[:8].clone() for k, v in data.tensors.items()}
    for name in ("hist_item_id", "hist_category", "hist_timestamp"):
        batch[name].zero_()
    assert torch.isfinite(TLSI(schema, 8)(batch)).all()


def test_tlsi_overfits_a_tiny_batch_and_is_seeded():
    _, _, schema, data = world_data(400)
    small = data.subset(torch.arange(128))
    runs = []
    for epochs in (30, 3):
        seed_everything(0)
        model = TLSI(schema, 8, short_len=5)
        res = fit(model, small, epochs=epochs, batch_size=128, lr=1e-2, progress=False)
        runs.append(res.history.train_loss.to_numpy())
    assert runs[0][-1] < 0.5 * runs[0][0]
    np.testing.assert_array_equal(runs[0][:3], runs[1])  # same seed, same numbers


def test_constructor_contract_and_missing_time_features():
    _, _, schema, data = world_data(300)
    seed_everything(0)
    a = TLSI(schema, 8, (16,), short_len=3)
    seed_everything(0)
    b = TLSI(schema, embedding_dim=8, hidden=(16,), short_len=3)
    batch = next(data.batches(32))
    torch.testing.assert_close(a(batch), b(batch))
    assert a.mlp.net[0].out_features == 16
    with pytest.raises(ValueError, match="Timestamp\\('hist_timestamp', max_len=12\\)"):
        TLSI(schema.drop("hist_timestamp"), 8)
    with pytest.raises(ValueError, match="Timestamp\\('timestamp', max_len=None\\)"):
        TLSI(schema.drop("timestamp").add(Timestamp("timestamp", 12)), 8)


# ------------------------------------------------------------------ timestamp features
def test_timestamp_features_become_int64_tensors_and_are_not_embedded():
    df = pd.DataFrame({"item": [1, 2], "label": [0.0, 1.0], "t": [1_700_000_000, 5],
                       "hist_t": [np.array([1, 2]), np.array([3, 4])]})
    schema = Schema((Categorical("item", 3),)).add(Timestamp("t"), Timestamp("hist_t", max_len=2))
    data = TensorData.from_frame(df, schema)
    assert data["t"].dtype == torch.int64 and data["t"][0] == 1_700_000_000
    assert data["hist_t"].tolist() == [[1, 2], [3, 4]]
    assert schema.tables == {"item": 3} and [f.name for f in schema.timestamps] == ["t", "hist_t"]
    with pytest.raises(ValueError, match="arrays of length 3"):
        TensorData.from_frame(df, Schema((Timestamp("hist_t", 3),)))
    with pytest.raises(ValueError, match="integer seconds"):
        TensorData.from_frame(df.assign(t=[0.5, 1.0]), Schema((Timestamp("t"),)))
    with pytest.raises(ValueError, match="max_len must be positive"):
        Timestamp("t", 0)


def test_time_gaps_are_a_behaviour_side_feature_din_pairs():
    _, _, schema, data = world_data(300)
    gdata, gschema = add_time_gaps(data, schema)
    real = data["hist_item_id"] > 0
    want = gap_bucket(data["timestamp"][:, None] - data["hist_timestamp"]) + 1
    assert (gdata["hist_gap"][real] == want[real]).all() and (gdata["hist_gap"][~real] == 0).all()
    assert (gdata["gap"] == 1).all() and "hist_gap" not in data.tensors   # inputs untouched
    assert gschema["hist_gap"] == Sequence("hist_gap", 21, 12, embedding="gap")
    model = DIN(gschema, 8)
    assert ("gap", "hist_gap") in model.embedding.pairs
    batch = next(gdata.batches(16))
    out = model(batch)
    # The gaps reach the output: other gaps, other logits.
    moved = model({**batch, "hist_gap": torch.where(batch["hist_gap"] > 0, 21 - batch["hist_gap"], 0)})
    assert not torch.allclose(out, moved)
    with pytest.raises(ValueError, match="Timestamp"):
        add_time_gaps(data, schema.drop("timestamp"))

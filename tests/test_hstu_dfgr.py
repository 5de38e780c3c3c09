"""HSTU block, MetaGR / DFGR generative ranking, and the simulator's action-type knob."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ctrlib.data import CTRWorld
from ctrlib.data.generative import (TRAIN_EVENT, evaluate_events, event_predictions, impression_schema,
                                    impressions_from_sequences, sequence_data, sequence_schema, serve_events,
                                    split_by_global_time, split_last)
from ctrlib.models.dfgr import GenerativeRanker, attention_flops, dfgr_mask
from ctrlib.models.hstu import LN_EPS, HSTUBlock, causal_mask, next_timestamps, time_buckets
from ctrlib.train import TrainConfig, fit


def _ranker(N, dim=8, n_items=20, n_attrs=5, n_actions=4, **kw):
    return GenerativeRanker(sequence_schema(n_items, n_attrs, n_actions, N), dim, (64,), **kw)


def _batch(B=3, N=7, seed=0, pad=2):
    g = torch.Generator().manual_seed(seed)
    b = {"item_id": torch.randint(1, 20, (B, N), generator=g), "category": torch.randint(1, 5, (B, N), generator=g),
         "action": torch.randint(1, 5, (B, N), generator=g),
         "timestamp": torch.cumsum(torch.randint(1, 100_000, (B, N), generator=g), 1)}
    for k in ("item_id", "category", "action"):
        b[k][0, :pad] = 0  # a left-padded user
    return b


def test_time_buckets_follow_meta_log_rule():
    dt = torch.tensor([0, 1, 2, 10, 3600, -3600, 10**12])
    expected = [min(int(np.floor(np.log(max(abs(float(x)), 1)) / 0.301)), 128) for x in dt.tolist()]
    assert time_buckets(dt).tolist() == expected
    assert time_buckets(torch.tensor([10**18])).item() == 128  # clamped
    assert next_timestamps(torch.tensor([[1, 5, 9]])).tolist() == [[5, 9, 9]]


@pytest.mark.parametrize("attention", ["silu", "softmax"])
def test_hstu_block_matches_naive_loop(attention):
    torch.manual_seed(0)
    B, N, D, H = 2, 5, 8, 2
    block = HSTUBlock(D, H, max_len=N, attention=attention)
    with torch.no_grad():  # non-trivial biases so both rab halves are exercised
        block.rab.pos_w.normal_(0, 0.5)
        block.rab.ts_w.normal_(0, 0.5)
    x = torch.randn(B, N, D)
    t = torch.cumsum(torch.randint(1, 10_000, (B, N)), 1)
    y = block(x, t)
    # naive: one query position, one head, one key at a time
    W, dv, dq = block.uvqk, block.v_dim, block.qk_dim
    expected = torch.zeros_like(x)
    for b in range(B):
        for i in range(N):
            t_next = t[b, i + 1] if i + 1 < N else t[b, i]
            av = []
            for h in range(H):
                def proj(pos, b=b, h=h):
                    z = F.silu(F.layer_norm(x[b, pos], (D,), eps=LN_EPS) @ W)
                    u, v, q, k = torch.split(z, [H * dv, H * dv, H * dq, H * dq])
                    return u, v[h * dv:(h + 1) * dv], q[h * dq:(h + 1) * dq], k[h * dq:(h + 1) * dq]
                u_i, _, q_i, _ = proj(i)
                scores, values = [], []
                for j in range(i + 1):  # causal
                    _, v_j, _, k_j = proj(j)
                    s = q_i @ k_j / (dq ** 0.5 if attention == "softmax" else 1.0)
                    s = s + block.rab.pos_w[j - i + N - 1]
                    dt = max(abs(int(t_next) - int(t[b, j])), 1)
                    s = s + block.rab.ts_w[min(int(np.floor(np.log(dt) / 0.301)), 128)]
                    scores.append(s)
                    values.append(v_j)
                s = torch.stack(scores)
                a = F.silu(s) / N if attention == "silu" else torch.softmax(s, 0)
                av.append((a[:, None] * torch.stack(values)).sum(0))
            av = torch.cat(av)
            expected[b, i] = x[b, i] + block.out(F.layer_norm(av, (H * dv,), eps=LN_EPS) * u_i)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


def test_dfgr_mask_properties():
    n = 6
    M = dfgr_mask(n)
    rr, rf, fr, ff = M[:n, :n], M[:n, n:], M[n:, :n], M[n:, n:]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(rr, j <= i), "real tokens are causal"
    assert not rf.any(), "no real token sees a fake token"
    assert torch.equal(ff, i == j), "a fake token sees only itself among the fakes"
    fake_cols = M[:, n:].clone()
    fake_cols[n:][torch.eye(n, dtype=torch.bool)] = False
    assert not fake_cols.any(), "no fake token is visible to any other token"
    assert torch.equal(fr, j < i), "fake i sees the real tokens strictly before it"
    assert torch.equal(dfgr_mask(n, leak=True)[n:, :n], j <= i), "leak: fake i also sees real i"


@pytest.mark.parametrize("attention", ["silu", "softmax"])
@pytest.mark.parametrize("leak", [False, True])
def test_dual_flow_equals_full_mask_attention(attention, leak):
    """DFGR's two-flow computation equals one HSTU stack over 2N tokens under dfgr_mask."""
    torch.manual_seed(0)
    b, N = _batch(), 7
    m = _ranker(N, mode="dfgr", attention=attention, leak=leak).eval()
    c = m._content(b)
    a = b["action"]
    x = torch.cat([c + m.action_emb(a), c + m.action_emb(torch.full_like(a, m.placeholder))], 1)
    t = b["timestamp"]
    valid = torch.cat([b["item_id"] > 0] * 2, 1)
    mask = dfgr_mask(N, leak) & (valid[:, None, :] | torch.eye(2 * N, dtype=torch.bool))
    for block in m.blocks:
        x = block(x, torch.cat([t, t], 1), mask, positions=torch.cat([torch.arange(N)] * 2),
                  query_times=torch.cat([next_timestamps(t), t], 1))
    torch.testing.assert_close(m(b), m._readout(x[:, N:]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["dfgr", "metagr"])
def test_no_label_leakage(mode):
    """The prediction for event i never depends on the action of event i or later."""
    torch.manual_seed(0)
    b, N = _batch(pad=0), 7
    m = _ranker(N, mode=mode).eval()
    z = m(b)
    b2 = {**b, "action": b["action"].clone()}
    b2["action"][:, 3] = b["action"][:, 3] % 4 + 1  # change event 3's action
    z2 = m(b2)
    torch.testing.assert_close(z[:, :4], z2[:, :4])
    assert (z[:, 4:] - z2[:, 4:]).abs().max() > 1e-6, "later events do see event 3's action"
    if mode == "dfgr":
        leaky = _ranker(N, mode=mode, leak=True).eval()
        assert (leaky(b)[:, 3] - leaky(b2)[:, 3]).abs().max() > 1e-6, "the leak ablation does leak"


@pytest.mark.parametrize("mode", ["dfgr", "metagr"])
def test_candidates_isolated_and_consistent(mode):
    torch.manual_seed(0)
    b, n = _batch(N=9), 5
    m = _ranker(9, mode=mode).eval()
    hist = {k: v[:, :n] for k, v in b.items()}
    cand = {k: v[:, n:].clone() for k, v in b.items()}
    z = m.score_candidates(hist, cand)  # [B, 4]
    assert z.shape == (3, 4)
    cand2 = {k: v.clone() for k, v in cand.items()}
    cand2["item_id"][:, 2] = (cand["item_id"][:, 2] + 3) % 19 + 1
    z2 = m.score_candidates(hist, cand2)
    torch.testing.assert_close(z[:, [0, 1, 3]], z2[:, [0, 1, 3]])
    assert (z[:, 2] - z2[:, 2]).abs().max() > 1e-6
    # the first candidate, scored after the history, equals the generative pass at position n
    torch.testing.assert_close(z[:, 0], m(b)[:, n], atol=1e-5, rtol=1e-4)


def _dense_metagr_candidates(m, hist, cand):
    """Reference for MetaGR's serving path: one HSTU stack over all (2n + m) tokens under a dense mask."""
    B, n = hist["item_id"].shape
    k = cand["item_id"].shape[1]
    x = torch.cat([torch.stack([m._content(hist), m.action_emb(hist["action"])], 2).reshape(B, 2 * n, -1),
                   m._content(cand)], 1)                                                       # [B, 2n + m, D]
    tt = torch.cat([hist["timestamp"].repeat_interleave(2, 1), cand["timestamp"]], 1)
    q_time = torch.cat([next_timestamps(torch.cat([hist["timestamp"].repeat_interleave(2, 1),
                                                   cand["timestamp"][:, :1]], 1))[:, :2 * n], cand["timestamp"]], 1)
    ok = torch.cat([(hist["item_id"] > 0).repeat_interleave(2, 1), torch.ones(B, k, dtype=torch.bool)], 1)
    T = 2 * n + k
    mask = causal_mask(T)
    mask[2 * n:, 2 * n:] = torch.eye(k, dtype=torch.bool)  # candidates: history + self only
    mask = mask & (ok[:, None, :] | torch.eye(T, dtype=torch.bool))
    pos = torch.cat([torch.arange(2 * n), torch.full((k,), 2 * n)])
    for block in m.blocks:
        x = block(x, tt, mask, positions=pos, query_times=q_time)
    return m._readout(x[:, 2 * n:])


@pytest.mark.parametrize("attention", ["silu", "softmax"])
def test_metagr_structured_candidates_equal_dense_attention(attention):
    """MetaGR's serving path (history encoded once, candidates attend to it) computes exactly the
    dense (2n + m)^2 attention with HSTU's target mask."""
    torch.manual_seed(0)
    b, n = _batch(N=9), 5
    m = _ranker(9, mode="metagr", attention=attention).eval()
    hist = {k: v[:, :n] for k, v in b.items()}
    cand = {k: v[:, n:] for k, v in b.items()}
    with torch.no_grad():
        torch.testing.assert_close(m.score_candidates(hist, cand), _dense_metagr_candidates(m, hist, cand),
                                   atol=1e-5, rtol=1e-4)


def test_ranker_reads_its_inputs_through_the_schema():
    from ctrlib.data.schema import Schema, Sequence
    schema = Schema((Sequence("movie", 20, 7), Sequence("genre", 5, 7), Sequence("decade", 4, 7),
                     Sequence("rating_class", 6, 7)), ("label",), ("t",))
    m = GenerativeRanker(schema, 8, (16,), item="movie", action="rating_class", timestamp="t").eval()
    b = _batch()
    batch = {"movie": b["item_id"], "genre": b["category"], "decade": b["category"] % 4, "rating_class": b["action"],
             "t": b["timestamp"]}
    assert m(batch).shape == (3, 7) and m.placeholder == 5 and set(m.attr_emb) == {"genre", "decade"}
    z = m(batch)
    batch["decade"] = (batch["decade"] + 1) % 4 * (batch["movie"] > 0)
    assert (m(batch) - z).abs().max() > 1e-6, "every attribute sequence of the schema is read"
    with pytest.raises(KeyError, match="action"):
        GenerativeRanker(schema, 8, (16,), item="movie", timestamp="t")
    with pytest.raises(KeyError, match="extra"):
        GenerativeRanker(schema, 8, (16,), item="movie", action="rating_class")


def test_attention_flops_ratios():
    n = 512
    assert attention_flops(n, 32, "dfgr") / attention_flops(n, 32, "metagr") == pytest.approx(0.5, abs=0.01)
    assert attention_flops(n, 32, "dfgr", 1) / attention_flops(n, 32, "metagr", 1) == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="mode"):
        attention_flops(n, 32, "hstu")
    with pytest.raises(ValueError, match="mode"):
        _ranker(5, mode="interleaved")
    with pytest.raises(ValueError, match="attention"):
        HSTUBlock(8, attention="relu")


def test_action_world_knob():
    # the default world is untouched by the knob
    a, b = CTRWorld(n_users=300, n_items=200), CTRWorld(n_users=300, n_items=200, action_types=True)
    pd.testing.assert_frame_equal(a.sample(2000, seed=3), b.sample(2000, seed=3))
    with pytest.raises(ValueError, match="action_types"):
        a.action_sequences(10, 5)
    s = b.action_sequences(50, 400, seed=1)  # several hundred events per user
    s2 = b.action_sequences(50, 400, seed=1)
    for k in s:
        np.testing.assert_array_equal(s[k], s2[k])
    assert s["item_id"].shape == (50, 400) and s["user_id"].shape == (50,)
    assert set(np.unique(s["action"])) <= {1, 2, 3, 4} and len(np.unique(s["action"])) == 4
    np.testing.assert_array_equal(s["label"], s["action"] >= 2)
    assert (np.diff(s["timestamp"], axis=1) > 0).all()
    assert (s["p_convert"] <= s["p_like"]).all() and (s["p_like"] <= s["true_p"]).all()
    assert 0.2 < s["label"].mean() < 0.6


def test_splits_and_impressions():
    valid = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 12], dtype=bool)
    code = split_last(valid, 0.1)
    assert code[0].tolist() == [0, 0] + [1] * 8 + [2, 3]
    assert code[1].tolist() == [1] * 8 + [2, 2, 3, 3] or code[1].tolist() == [1] * 10 + [2, 3]
    seqs = {"item_id": np.arange(1, 25).reshape(2, 12) * valid, "category": np.ones((2, 12), int) * valid,
            "action": (np.arange(24).reshape(2, 12) % 4 + 1) * valid, "label": np.ones((2, 12)),
            "timestamp": np.arange(24).reshape(2, 12) * 100}
    d = impressions_from_sequences(seqs, code, 3, "test", placeholder=5)
    r = d["item_id"].tolist().index(12)  # user 0's test event (item 12, column 11)
    assert d["hist_item_id"][r].tolist() == [9, 10, 11]  # strictly before the target
    assert d["hist_timestamp"][r].tolist() == [800, 900, 1000] and d["timestamp"][r] == 1100
    assert d["hist_action"][r].tolist() == seqs["action"][0, 8:11].tolist()  # earlier actions: true ones
    assert d["action"][r] == 5  # the candidate's own action: the placeholder
    first = impressions_from_sequences(seqs, code, 3, "train", placeholder=5)
    assert first["hist_item_id"][0].tolist() == [0, 0, 0]  # left padding
    with pytest.raises(ValueError, match="which"):
        impressions_from_sequences(seqs, code, 3, "holdout", placeholder=5)


def test_global_time_split():
    t = np.array([[0, 0, 10, 20, 30], [5, 15, 25, 35, 45]])
    valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool)
    code = split_by_global_time(t, valid, 0.25, 0.25)  # 8 events: 4 train, 2 valid, 2 test
    assert code.tolist() == [[0, 0, 1, 1, 2], [1, 1, 2, 3, 3]]
    # one clock: every training event precedes every validation event, which precedes every test event
    assert t[code == 1].max() < t[code == 2].min() and t[code == 2].max() < t[code == 3].min()
    tied = split_by_global_time(np.array([[1, 2, 2, 2, 3]]), np.ones((1, 5), bool), 0.2, 0.2)
    assert len(set(tied[0, 1:4])) == 1, "events of the same second fall in one window"
    with pytest.raises(ValueError, match="share"):
        split_by_global_time(t, valid, 0.6, 0.5)


def _action_world_data(users=300, events=40):
    world = CTRWorld(n_users=400, n_items=200, n_categories=8, action_types=True)
    s = world.action_sequences(users, events, seed=0)
    code = split_by_global_time(s["timestamp"], np.ones_like(s["item_id"], dtype=bool))
    return s, code, sequence_data(s, code)


def test_generative_training_learns_the_action_world():
    s, code, data = _action_world_data()
    torch.manual_seed(0)
    m = GenerativeRanker(sequence_schema(202, 10, 4, 40), 16, (64,), mode="dfgr")
    config = TrainConfig(epochs=3, lr=3e-3, batch_size=32, loss_mask=TRAIN_EVENT, progress=False)
    h = fit(m, data, lambda model: evaluate_events(model, data, "valid"), config).history
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert evaluate_events(m, data, "test")["auc"] > 0.6
    # the serving path (history encoded once, the candidate after it) gives the same predictions as the
    # teacher-forced pass, on the same events in the same order as the impressions
    imp = impressions_from_sequences(s, code, 39, "test", placeholder=m.placeholder)
    ev = event_predictions(m, data, "test")
    np.testing.assert_array_equal(imp["label"].numpy(), ev["label"])
    np.testing.assert_allclose(serve_events(m, imp), ev["p"], atol=1e-5)


def test_leaky_mask_is_caught_by_the_serving_path():
    """The leak ablation reads the label at training time; through the serving path it cannot."""
    s, code, data = _action_world_data(200, 30)
    torch.manual_seed(0)
    m = GenerativeRanker(sequence_schema(202, 10, 4, 30), 16, (64,), mode="dfgr", leak=True)
    fit(m, data, None, TrainConfig(epochs=3, lr=3e-3, batch_size=32, loss_mask=TRAIN_EVENT, progress=False))
    teacher_forced = evaluate_events(m, data, "train")["auc"]
    imp = impressions_from_sequences(s, code, 29, "train", placeholder=m.placeholder)
    from ctrlib.metrics import auc
    served = auc(imp["label"].numpy(), serve_events(m, imp))
    assert teacher_forced > 0.95 and served < teacher_forced - 0.1, (teacher_forced, served)


def test_impression_schema_fits_din():
    from ctrlib.models.din import DIN
    s, code, _ = _action_world_data(50, 20)
    imp = impressions_from_sequences(s, code, 19, "train", placeholder=5)
    din = DIN(impression_schema(202, 10, 4, 19), 8, hidden=(16,))
    assert din(imp).shape == (len(imp["label"]),)

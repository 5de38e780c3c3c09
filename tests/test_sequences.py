"""Behaviour-sequence samples: histories strictly before the prediction, padding, negatives,
the simulator's multi-interest histories, MovieLens as sequences."""
import numpy as np
import pandas as pd
import pytest
import torch

from ctrlib.data import Categorical, CTRWorld, Schema, Sequence, TensorData, build_behaviour_samples
from ctrlib.data.movielens import MovieLens100K
from ctrlib.data.sequences import history_index, movielens_samples


def _random_log(n=400, users=7, items=30, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": rng.integers(1, users + 1, n), "item_id": rng.integers(1, items + 1, n),
                         "category": rng.integers(1, 5, n), "timestamp": rng.integers(0, 60, n),  # many ties
                         "label": rng.integers(0, 2, n).astype(np.float32)})


def _naive_history(log, user, t, L, col="item_id"):
    rows = log[(log.user_id == user) & (log.timestamp < t)].sort_values("timestamp", kind="stable")
    vals = rows[col].to_numpy()[-L:]
    return np.concatenate([np.zeros(L - len(vals), dtype=np.int64), vals])


def test_history_index_is_strictly_before_left_padded_and_truncated():
    log_user = np.array([1, 1, 1, 1, 2])
    log_time = np.array([10, 20, 20, 30, 5])
    idx = history_index([1, 1, 1, 2, 3], [20, 31, 5, 5, 100], log_user, log_time, max_len=3)
    assert idx.tolist() == [[-1, -1, 0],      # t=20: only the behaviour at 10 (ties excluded)
                            [1, 2, 3],        # t=31: the last three of four
                            [-1, -1, -1],     # nothing before t=5
                            [-1, -1, -1],     # user 2's behaviour at 5 is not before 5
                            [-1, -1, -1]]     # unknown user
    with pytest.raises(ValueError, match="sorted"):
        history_index([1], [1], np.array([2, 1]), np.array([0, 0]), 2)


@pytest.mark.parametrize("L", [1, 4, 50])
def test_builder_matches_a_naive_loop_and_never_leaks(L):
    log = _random_log()
    df = build_behaviour_samples(log, L, history_features=("category",))
    assert len(df) == len(log) and df.timestamp.is_monotonic_increasing
    hist = np.stack(df.hist_item_id.to_numpy())
    ts = np.stack(df.hist_timestamp.to_numpy())
    mask = hist > 0
    assert hist.shape == (len(log), L)
    # leakage: every real behaviour is strictly earlier than the prediction
    assert (ts[mask] < np.broadcast_to(df.timestamp.to_numpy()[:, None], ts.shape)[mask]).all()
    # padding only on the left, and hist_len counts the real positions
    first = np.where(mask.any(1), mask.argmax(1), L)
    assert (mask == (np.arange(L)[None, :] >= first[:, None])).all()
    assert (df.hist_len.to_numpy() == mask.sum(1)).all()
    for i in np.random.default_rng(1).choice(len(df), 40, replace=False):
        row = df.iloc[i]
        expected = _naive_history(log, row.user_id, row.timestamp, L)
        np.testing.assert_array_equal(row.hist_item_id, expected)
        np.testing.assert_array_equal(row.hist_category, _naive_history(log, row.user_id, row.timestamp, L, "category"))


def test_builder_with_a_separate_log_and_tensor_data():
    samples = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 7], "timestamp": [100, 200, 50],
                            "label": [1.0, 0.0, 1.0]})
    log = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 4], "timestamp": [150, 10, 100, 60]})
    df = build_behaviour_samples(samples, 2, log=log)
    assert df.item_id.tolist() == [7, 5, 6]  # sorted by time
    assert [list(h) for h in df.hist_item_id] == [[0, 0], [0, 2], [3, 1]]
    schema = Schema((Categorical("item_id", 9), Sequence("hist_item_id", 9, 2, embedding="item_id")))
    data = TensorData.from_frame(df, schema)
    assert data["hist_item_id"].shape == (3, 2) and data["hist_item_id"].dtype == torch.long
    with pytest.raises(KeyError, match="lacks columns"):
        build_behaviour_samples(samples, 2, log=log, history_features=("category",))


def test_negatives_are_unseen_items_at_the_same_time_with_the_same_history():
    log = _random_log(n=300, users=5, items=40)
    items = pd.DataFrame({"item_id": np.arange(1, 41), "category": np.arange(1, 41) % 4 + 1})
    log["category"] = items.set_index("item_id").category.reindex(log.item_id).to_numpy()
    df = build_behaviour_samples(log, 5, negatives=3, items=items, item_features=("category",), seed=7)
    pos, neg = df[df.is_negative == 0], df[df.is_negative == 1]
    assert len(pos) == len(log) and len(neg) == 3 * len(log)
    assert (neg.label == 0).all()
    seen = set(zip(log.user_id, log.item_id))
    assert not any((u, i) in seen for u, i in zip(neg.user_id, neg.item_id)), "a negative the user interacted with"
    assert (neg.category.to_numpy() == neg.item_id.to_numpy() % 4 + 1).all()  # side features follow the item
    # same timestamp and history as a positive of the same user
    keyed = {(r.user_id, r.timestamp): tuple(r.hist_item_id) for r in pos.itertuples()}
    assert all(keyed[(r.user_id, r.timestamp)] == tuple(r.hist_item_id) for r in neg.itertuples())
    again = build_behaviour_samples(log, 5, negatives=3, items=items, item_features=("category",), seed=7)
    pd.testing.assert_frame_equal(df, again)
    other = build_behaviour_samples(log, 5, negatives=3, items=items, item_features=("category",), seed=8)
    assert not other.item_id.equals(df.item_id)
    with pytest.raises(ValueError, match="item table"):
        build_behaviour_samples(log, 5, negatives=1)


def test_negatives_fail_clearly_when_a_user_has_seen_everything():
    log = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1, 2], "label": [1.0, 1.0]})
    with pytest.raises(ValueError, match="every item"):
        build_behaviour_samples(log, 2, negatives=1, items=pd.DataFrame({"item_id": [1, 2]}))


# ----------------------------------------------------------------------------- simulator knob
def test_default_world_has_no_history_term():
    df = CTRWorld(seed=0, n_users=100, n_items=80).sample(500, seed=0)
    assert "z_history" not in df and "hist_item_id" not in df


def test_multi_interest_world_histories_are_past_only_and_drive_the_oracle():
    w = CTRWorld(seed=0, n_users=200, n_items=150, history_len=10, history_match=2.0)
    df = w.sample(4000, seed=0)
    hist, cats = np.stack(df.hist_item_id.to_numpy()), np.stack(df.hist_category.to_numpy())
    ts = np.stack(df.hist_timestamp.to_numpy())
    mask = hist > 0
    assert mask.sum(1).min() >= 1 and (mask.sum(1) == 10).mean() > 0.9  # the pre-period fills histories
    assert (ts[mask] < np.broadcast_to(df.timestamp.to_numpy()[:, None], ts.shape)[mask]).all()
    share = ((cats == df.category.to_numpy()[:, None]) & mask).sum(1) / np.maximum(mask.sum(1), 1)
    np.testing.assert_allclose(df.z_history, 2.0 * share)
    np.testing.assert_allclose(df.filter(like="z_").sum(axis=1) + w.bias, df.true_logit)
    # the same histories come out of the shared builder over the world's behaviour log
    rebuilt = build_behaviour_samples(df.drop(columns=["hist_item_id", "hist_category"]), 10,
                                      log=w.behaviour_log(), history_features=("category",))
    np.testing.assert_array_equal(np.stack(rebuilt.hist_item_id.to_numpy()), hist)
    # the candidate's category share in the history matters: clicks rise with it
    assert df.groupby(share > 0.5).true_p.mean().diff().iloc[-1] > 0.05
    schema = w.schema()
    assert schema["hist_item_id"].table == "item_id" and schema["hist_category"].max_len == 10
    TensorData.from_frame(df, schema)
    with pytest.raises(ValueError, match="history_len"):
        CTRWorld(seed=0, n_users=50, n_items=50, history_match=1.0)


# ----------------------------------------------------------------------------- MovieLens
def _tiny_movielens():
    ratings = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "item_id": [1, 2, 3, 1, 4, 2],
                            "rating": [5, 3, 4, 2, 5, 4], "timestamp": [10, 20, 20, 15, 30, 5]})
    users = pd.DataFrame({"user_id": [1, 2, 3], "age": [20, 40, 60], "gender": ["M", "F", "M"],
                          "occupation": ["a", "b", "a"], "zip_code": ["1", "2", "3"]})
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": list("wxyz"),
                          "year": pd.array([1995, 1980, None, 1999], dtype="Int64"),
                          "genres": ["Action|Comedy", "Drama", "Comedy", "unknown"]})
    return MovieLens100K(ratings, users, items, source="test")


def test_movielens_samples_label_history_and_schema():
    df, schema = movielens_samples(_tiny_movielens(), max_len=3)
    assert len(df) == 6 and df.label.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # rating >= 4, by time
    user1_last = df[(df.user_id == 1) & (df.timestamp == 20)]
    assert all(list(h) == [0, 0, 1] for h in user1_last.hist_item_id)  # same-second ratings unseen
    data = TensorData.from_frame(df, schema)
    assert data["hist_genre"].shape == (6, 3)
    assert schema["hist_item_id"].table == "item_id"
    neg, _ = movielens_samples(_tiny_movielens(), max_len=3, negatives=1, seed=0)
    assert (neg[neg.is_negative == 1].label == 0).all()

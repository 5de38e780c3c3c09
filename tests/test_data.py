import numpy as np
import pandas as pd
import pytest
import torch

from ctrlib.data import Categorical, CTRWorld, Schema, Sequence, TensorData, Vocab, encode_columns, split_by_time


def test_vocab_padding_oov_and_min_count():
    v = Vocab.fit(["a", "b", "a", "c", "a", "b"], min_count=2)
    assert v.values == ("a", "b") and v.size == 4 and v.oov == 3
    assert v.encode(["a", "b", "c", "zzz", None]).tolist() == [1, 2, 3, 3, 0]
    assert v.decode([0, 1, 3]) == [None, "a", "<oov>"]


def test_encode_columns_fits_on_train_only():
    train = pd.DataFrame({"city": ["x", "y", "x"]})
    test = pd.DataFrame({"city": ["y", "unseen"]})
    vocabs, (tr, te) = encode_columns(train, [test], ["city"])
    assert tr.city.tolist() == [1, 2, 1] and te.city.tolist() == [2, vocabs["city"].oov]
    with pytest.raises(KeyError, match="not in the frame"):
        encode_columns(train, [], ["town"])


def test_schema_checks():
    with pytest.raises(ValueError, match="unique"):
        Schema((Categorical("a", 3), Categorical("a", 3)))
    with pytest.raises(ValueError, match="disagree on vocab_size"):
        Schema((Categorical("item", 5), Sequence("hist", 6, 3, embedding="item")))
    s = Schema((Categorical("a", 3), Categorical("b", 4)))
    with pytest.raises(KeyError, match="unknown feature 'c'"):
        s.drop("c")
    assert [f.name for f in s.drop("a").features] == ["b"]


def test_tensor_data_batches_and_errors():
    schema = Schema((Categorical("a", 5),))
    df = pd.DataFrame({"a": [1, 2, 3, 4, 1], "label": [0, 1, 0, 1, 1]})
    data = TensorData.from_frame(df, schema)
    batches = list(data.batches(2, shuffle=True, seed=3))
    assert [len(b["a"]) for b in batches] == [2, 2, 1]
    assert sorted(torch.cat([b["a"] for b in batches]).tolist()) == [1, 1, 2, 3, 4]
    again = list(data.batches(2, shuffle=True, seed=3))
    assert all(torch.equal(x["a"], y["a"]) for x, y in zip(batches, again))
    with pytest.raises(KeyError, match="lacks columns"):
        TensorData.from_frame(df.drop(columns="label"), schema)
    with pytest.raises(ValueError, match="outside its vocabulary"):
        TensorData.from_frame(df.assign(a=[1, 2, 3, 9, 1]), schema)


def test_world_is_seeded_and_has_an_oracle():
    w1, w2 = CTRWorld(seed=3, n_users=300, n_items=200), CTRWorld(seed=3, n_users=300, n_items=200)
    a, b = w1.sample(5000, seed=1), w2.sample(5000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(w1.sample(5000, seed=2))
    assert abs(a.true_p.mean() - w1.config.base_ctr) < 0.03
    terms = a.filter(like="z_").sum(axis=1) + w1.bias
    np.testing.assert_allclose(terms, a.true_logit)
    assert a.timestamp.is_monotonic_increasing
    schema = w1.schema()
    data = TensorData.from_frame(a, schema)  # every id inside its declared vocabulary
    assert len(data) == 5000


def test_world_planted_crosses_have_zero_lower_order_marginals():
    w = CTRWorld(seed=0, n_users=100, n_items=100)
    t = w.cross3_age_daypart_category
    for axis in (1, 2):  # averaging over daypart or category (even counts) leaves nothing of order 2
        np.testing.assert_allclose(t.mean(axis=axis), 0, atol=1e-12)
    assert (t != 0).any()


def test_world_histories_are_left_padded_and_share_the_item_table():
    w = CTRWorld(seed=0, n_users=200, n_items=100, history_len=8)
    df = w.sample(1000, seed=0)
    hist = np.stack(df.hist_item_id.to_numpy())
    assert hist.shape == (1000, 8) and hist.max() <= 100
    first_real = (hist > 0).argmax(axis=1)
    assert all((row[i:] > 0).all() for row, i in zip(hist, first_real))  # padding only on the left
    schema = w.schema()
    assert schema["hist_item_id"].table == "item_id"


def test_split_by_time_never_puts_the_future_in_training():
    df = pd.DataFrame({"timestamp": np.random.default_rng(0).permutation(100), "x": range(100)})
    tr, va, te = split_by_time(df, 0.1, 0.2)
    assert len(tr) == 70 and len(va) == 10 and len(te) == 20
    assert tr.timestamp.max() < va.timestamp.min() and va.timestamp.max() < te.timestamp.min()
    with pytest.raises(KeyError, match="no time column"):
        split_by_time(df, time_col="t")

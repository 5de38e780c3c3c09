"""Bad input gets a clear error (or, where legal but suspicious, a warning) that names the column or
argument and the problem; none trains silently (issue 13). One test per case, on small frames."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from ctrlib import evaluate, fit, predict
from ctrlib.data import Categorical, Numeric, Schema, Sequence, TensorData, Vocab, WorldConfig
from ctrlib.layers import FeatureEmbedding
from ctrlib.models import DeepFM

SCHEMA = Schema((Categorical("user_id", 6), Categorical("item_id", 5), Numeric("price")),
                extras=("group",))


def frame(n: int = 64, seed: int = 0, **columns) -> pd.DataFrame:
    """A small valid frame for SCHEMA: both labels, a few groups; ``columns`` replace columns."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"user_id": rng.integers(1, 6, n), "item_id": rng.integers(1, 5, n),
                       "price": rng.random(n), "label": np.arange(n) % 2, "group": np.arange(n) % 4})
    for k, v in columns.items():
        df[k] = v
    return df


def data(n: int = 64, seed: int = 0, **columns) -> TensorData:
    return TensorData.from_frame(frame(n, seed, **columns), SCHEMA)


def model(schema: Schema = SCHEMA) -> torch.nn.Module:
    torch.manual_seed(0)
    return DeepFM(schema, 4, (8,))


def column(values) -> list:
    """A column of ``frame()``'s length built from a few leading values, the rest valid."""
    return list(values) + [1] * (64 - len(values))


# --- TensorData.from_frame ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_numeric_values(bad):
    with pytest.raises(ValueError, match=r"column 'price' holds 1 NaN/inf values \(rows \[3\]"):
        data(price=[0.5] * 3 + [bad] + [0.5] * 60)


def test_nan_labels():
    with pytest.raises(ValueError, match=r"label 'label' holds 2 NaN/inf"):
        data(label=[np.nan, 1, np.nan] + [0] * 61)


@pytest.mark.parametrize("labels, shown", [(np.arange(64) % 5 + 1, r"\[2\.0, 3\.0, 4\.0, 5\.0\]"),
                                           (np.where(np.arange(64) % 2, 1, -1), r"\[-1\.0\]")])
def test_labels_outside_zero_one(labels, shown):
    with pytest.raises(ValueError, match=r"label 'label' must be 0/1 clicks.*outside, e\.g\. " + shown + ".*Binarise"):
        data(label=labels)


def test_empty_frame():
    with pytest.raises(ValueError, match="the frame has no rows"):
        TensorData.from_frame(frame().iloc[:0], SCHEMA)


@pytest.mark.parametrize("make, match", [
    (lambda: Categorical("city", 0), r"Categorical\('city'\)\.vocab_size must be >= 1, got 0"),
    (lambda: Categorical("city", 2.5), r"Categorical\('city'\)\.vocab_size must be an integer, got 2\.5"),
    (lambda: Sequence("hist", 5, 0), r"Sequence\('hist'\)\.max_len must be >= 1, got 0"),
    (lambda: Numeric("price", 0), r"Numeric\('price'\)\.dim must be >= 1, got 0"),
])
def test_impossible_feature_sizes(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_schema_labels_given_as_a_string():
    with pytest.raises(TypeError, match=r"Schema labels must be a tuple, got the string 'click'; "
                                        r"write labels=\('click',\)"):
        Schema((Categorical("a", 3),), labels="click")


def test_numeric_width_differs_from_the_declared_dim():
    schema = Schema((Numeric("embedding", dim=2),))
    df = pd.DataFrame({"embedding": [np.ones(3)] * 4, "label": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match=r"column 'embedding' must hold arrays of length 2.*shape \(4, 3\)"):
        TensorData.from_frame(df, schema)


def test_non_integral_float_ids_are_not_truncated():
    with pytest.raises(ValueError, match=r"id column 'item_id' holds 2 non-integral ids, e\.g\. \[0\.5, 2\.5\]"):
        data(item_id=column([0.5, 2.5]))


def test_string_ids_name_the_column():
    with pytest.raises(TypeError, match=r"id column 'user_id' must hold integer ids; it holds .*str.*Vocab"):
        data(user_id=column(["u1", "u2"]))


def test_nan_ids_are_counted_not_shown_as_int64_min():
    with pytest.raises(ValueError, match=r"id column 'user_id' holds 1 missing \(NaN\).*Vocab") as error:
        data(user_id=column([np.nan]))
    assert "-9223372036854775808" not in str(error.value)


def test_ragged_sequences_report_the_lengths():
    schema = Schema((Sequence("hist", 9, 3),))
    df = pd.DataFrame({"hist": [np.array([1, 2, 3]), np.array([1, 2]), np.array([4, 5, 6])], "label": [0, 1, 1]})
    with pytest.raises(ValueError, match=r"column 'hist' must hold arrays of length 3.*\{3: 2, 2: 1\}.*left-pad"):
        TensorData.from_frame(df, schema)


def test_tensors_do_not_share_memory_with_the_frame():
    df = frame(price=np.linspace(0, 1, 64, dtype=np.float32))  # float32: a zero-copy view was possible
    before = df.copy()
    tensors = TensorData.from_frame(df, SCHEMA)
    for batch in tensors.batches(16):
        for t in batch.values():
            t.add_(1)                  # an in-place op on a batch (a view of the TensorData)
    pd.testing.assert_frame_equal(df, before)
    assert not torch.equal(tensors["price"], torch.tensor(before["price"].to_numpy(), dtype=torch.float32))


# --- fit: arguments and data ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    ({"epochs": 0}, r"epochs must be >= 1, got 0"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"batch_size": -8}, r"batch_size must be >= 1, got -8"),
    ({"patience": 0}, r"patience must be >= 1, got 0"),
    ({"lr_decay": 0}, r"lr_decay must be in \(0, 1\], got 0"),
    ({"lr": 0.0}, r"lr must be > 0, got 0\.0"),
    ({"monitor": "acu"}, r"unknown monitor 'acu'.*did you mean 'auc'"),
])
def test_fit_refuses_impossible_arguments(overrides, match):
    m = model()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=match):
        fit(m, data(), data(seed=1), progress=False, **overrides)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items() if torch.is_tensor(v))  # untouched


def test_fit_refuses_an_empty_training_set():
    empty = data().subset(torch.arange(0))
    with pytest.raises(ValueError, match=r"fit \(train data\): the data has no rows"):
        fit(model(), empty, None, progress=False)


def test_fit_refuses_an_empty_validation_set():
    empty = data().subset(torch.arange(0))
    with pytest.raises(ValueError, match=r"fit \(validation data\): the data has no rows"):
        fit(model(), data(), empty, progress=False)


def test_fit_refuses_a_one_class_validation_set():
    one_class = data(label=np.zeros(64))
    with pytest.raises(ValueError, match=r"the validation set holds only label 0 \(64 rows\): it cannot rank"):
        fit(model(), data(), one_class, progress=False)


def test_fit_refuses_gauc_without_ranked_groups():
    no_group_has_both = data(group=np.arange(64) % 2)  # labels alternate with the group: each group is one class
    with pytest.raises(ValueError, match=r"monitor='gauc': no 'group' group .* has both a click and a non-click"):
        fit(model(), data(), no_group_has_both, monitor="gauc", group="group", progress=False)


def test_fit_stops_on_the_first_non_finite_loss():
    m = model()
    with pytest.raises(FloatingPointError, match=r"the training loss is (nan|inf) at epoch \d+, batch \d+ of 4: "
                                                 r"training diverged\. Lower lr"):
        fit(m, data(), None, epochs=50, batch_size=16, lr=1e30, embedding_l2=1.0, progress=False)


def test_fit_refuses_ratings_as_labels_before_training():
    ratings = data()
    ratings.tensors["label"] = torch.arange(64, dtype=torch.float32) % 5 + 1  # built by hand, not from_frame
    m = model()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"the train label 'label' must be 0/1 clicks "
                                         r".*e\.g\. \[2\.0, 3\.0, 4\.0, 5\.0\]"):
        fit(m, ratings, None, progress=False)
    assert torch.equal(before["embedding.weight"], m.embedding.weight)


def test_fit_leaves_the_global_rng_alone_and_same_seed_gives_same_numbers():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        m = model()
        torch.set_rng_state(state)
        fit(m, data(), data(seed=1), epochs=2, batch_size=16, progress=False, seed=7)
        assert torch.equal(torch.get_rng_state(), state), "fit changed the caller's global RNG"
        runs.append(m.embedding.weight.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_interrupted_fit_keeps_the_best_weights():
    m = model()
    snapshots = []

    def valid(model_):  # epoch 1 is the best; Ctrl-C arrives while epoch 3 is scored
        snapshots.append(copy.deepcopy(model_.state_dict()))
        if len(snapshots) == 3:
            raise KeyboardInterrupt
        return {"auc": 0.9 if len(snapshots) == 1 else 0.6}

    with pytest.warns(UserWarning, match="the model holds the weights of epoch 1"), pytest.raises(KeyboardInterrupt):
        fit(m, data(), valid, epochs=10, patience=5, lr=0.05, batch_size=16, progress=False)
    assert torch.equal(m.embedding.weight, snapshots[0]["embedding.weight"])
    assert not torch.equal(m.embedding.weight, snapshots[2]["embedding.weight"])  # not the last weights


# --- model vs data: the shared embedding table ----------------------------------------------------

def test_ids_beyond_the_models_vocabulary_cannot_read_another_features_rows():
    big = Schema((Categorical("user_id", 9), Categorical("item_id", 5), Numeric("price")), extras=("group",))
    wide = TensorData.from_frame(frame(user_id=column([8, 7])), big)  # valid for its own, larger vocabulary
    m = model()                                                       # user_id has 6 rows here: 6..8 are item rows
    with pytest.raises(IndexError, match=r"feature 'user_id' has 2 ids outside this model's vocabulary \[0, 6\), "
                                         r"e\.g\. \[(8, 7|7, 8)\]: they would read another feature's embedding rows"):
        fit(m, wide, None, progress=False)
    with pytest.raises(IndexError, match="feature 'user_id'"):
        predict(m, wide)


def test_sequence_lookups_are_bounded_by_their_own_table():
    schema = Schema((Categorical("user_id", 6), Categorical("item_id", 5), Sequence("hist", 5, 2, embedding="item_id")))
    emb = FeatureEmbedding(schema, 3)
    batch = {"user_id": torch.tensor([1]), "item_id": torch.tensor([2]), "hist": torch.tensor([[0, 5]])}
    with pytest.raises(IndexError, match=r"feature 'hist' has 1 ids outside this model's vocabulary \[0, 5\)"):
        emb(batch)
    with pytest.raises(IndexError, match="feature 'item_id'"):
        emb.lookup("item_id", torch.tensor([-1]))


def test_state_dict_of_another_table_layout_is_refused():
    a = Schema((Categorical("user_id", 6), Categorical("item_id", 5)))
    swapped = Schema((Categorical("user_id", 5), Categorical("item_id", 6)))  # same total rows, other layout
    trained, other = model(a), model(swapped)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"another table layout .*'user_id': saved 6, this model 5; "
                                         r"'item_id': saved 5, this model 6"):
        other.load_state_dict(trained.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items() if torch.is_tensor(v))  # nothing copied
    model(a).load_state_dict(trained.state_dict())  # the same layout still loads


# --- Vocab ----------------------------------------------------------------------------------------

def test_vocab_warns_when_values_mix_types():
    with pytest.warns(UserWarning, match=r"column 'city' holds values of several types "
                                         r"\['bool', 'float', 'int', 'str'\]"):
        v = Vocab.fit(pd.Series([1, 1.0, True, "1"], name="city", dtype=object))
    assert v.encode([1])[0] == v.encode([True])[0] != v.encode(["1"])[0]  # what the warning says


def test_vocab_warns_when_encoding_strings_against_ints():
    v = Vocab.fit(pd.Series([1, 2, 3], name="zip"))
    with pytest.warns(UserWarning, match=r"column 'zip' holds string values .* the vocabulary holds number values"):
        ids = v.encode(pd.Series(["1", "2"], name="zip"))
    assert (ids == v.oov).all()


def test_vocab_decode_refuses_ids_outside_it():
    v = Vocab.fit(["a", "b"])
    with pytest.raises(ValueError, match=r"Vocab\.decode: ids must be integers in \[0, 4\).*got \[-1, 4\]"):
        v.decode([1, -1, 4])
    assert v.decode([0, 1, 3]) == [None, "a", "<oov>"]


# --- evaluate -------------------------------------------------------------------------------------

def test_gauc_without_the_group_column_names_it():
    items = Schema((Categorical("item_id", 5), Numeric("price")))  # no user_id column at all
    plain = TensorData.from_frame(frame(), items)
    with pytest.raises(KeyError, match=r"gauc groups by 'user_id', which the data lacks.*extras"):
        evaluate(model(items), plain, ("auc", "gauc"))


def test_metric_names_are_case_insensitive_and_typos_get_a_suggestion():
    m, d = model(), data()
    assert evaluate(m, d, ("AUC", "LogLoss")) == evaluate(m, d, ("auc", "logloss"))
    with pytest.raises(ValueError, match=r"unknown metric 'acu'.*did you mean 'auc'"):
        evaluate(m, d, ("acu",))


def test_auc_of_one_class_is_an_error_not_nan():
    with pytest.raises(ValueError, match="AUC needs both clicks and non-clicks; all 64 labels are 0"):
        evaluate(model(), data(label=np.zeros(64)))


# --- WorldConfig ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("n_users", 0, r"WorldConfig\.n_users must be >= 1, got 0"),
    ("n_items", -5, r"WorldConfig\.n_items must be >= 2, got -5"),
    ("n_categories", 0, r"WorldConfig\.n_categories must be >= 1"),
    ("base_ctr", 0.0, r"WorldConfig\.base_ctr must be in \(0, 1\), got 0\.0"),
    ("base_ctr", 1.5, r"WorldConfig\.base_ctr must be in \(0, 1\), got 1\.5"),
    ("history_len", -1, r"WorldConfig\.history_len must be >= 0, got -1"),
    ("interests_per_user", 30, r"WorldConfig\.interests_per_user must be in \[1, 24\], got 30"),
    ("targeting", 1.2, r"WorldConfig\.targeting must be in \[0, 1\]"),
    ("first_order", float("nan"), r"WorldConfig\.first_order must be >= 0, got nan"),
])
def test_world_config_refuses_impossible_knobs(field, value, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**{field: value})

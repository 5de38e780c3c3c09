"""ctrlib.data.from_frames / from_files: schema, train-only vocabularies, OOV, and clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctrlib.data import Categorical, Numeric, Sequence, from_files, from_frames


def frames():
    train = pd.DataFrame({"user": ["a", "b", "a", "c"], "item": [1, 2, 3, 1], "price": [1.0, 2.0, 0.5, 3.0],
                          "hist": ["1|2", "", "2|3|1", "3"], "label": [1, 0, 1, 0]})
    valid = pd.DataFrame({"user": ["a", "z"], "item": [9, 2], "price": [1.0, 2.0], "hist": ["9|1", "2"],
                          "label": [1, 0]})
    return train, valid


def test_schema_and_vocabularies_fitted_on_train_only():
    train, valid = frames()
    d = from_frames(train, valid, valid, categorical=["user", "item"], numeric=["price"],
                    sequences={"hist": {"max_len": 2, "shares": "item"}})
    assert d.schema.features == (Categorical("user", 5), Categorical("item", 5), Numeric("price"),
                                 Sequence("hist", 5, 2, embedding="item"))
    assert set(d.vocabs["user"].values) == {"a", "b", "c"}           # 'z' (valid only) is not in it
    assert d.valid["user"].tolist() == [d.vocabs["user"].encode(["a"])[0], d.vocabs["user"].oov]
    assert d.oov_rate["valid"]["user"] == 0.5 and d.oov_rate["train"]["user"] == 0.0
    # sequences: the last max_len tokens, left-padded with 0, in the shared item vocabulary
    enc = d.vocabs["item"].encode
    assert d.train["hist"].tolist()[1] == [0, 0]
    assert d.train["hist"].tolist()[2] == list(enc(["3", "1"]))
    assert d.valid["hist"].tolist()[0] == [d.vocabs["item"].oov, enc(["1"])[0]]


def test_min_count_sends_rare_values_to_oov():
    train, valid = frames()
    d = from_frames(train, categorical=["user"], ignore=["item", "price", "hist"], min_count=2)
    assert d.vocabs["user"].values == ("a",)
    assert d.train["user"].tolist() == [1, 2, 1, 2]                  # b, c -> OOV (id 2)


def test_default_categorical_is_every_other_column():
    train, valid = frames()
    d = from_frames(train.drop(columns="hist"), numeric=["price"])
    assert [f.name for f in d.schema.categorical] == ["user", "item"]


def test_missing_and_undeclared_columns_are_named():
    train, valid = frames()
    with pytest.raises(KeyError, match=r"valid frame lacks the declared columns \['price'\]"):
        from_frames(train, valid.drop(columns="price"), categorical=["user", "item"], numeric=["price"],
                    ignore=["hist"])
    with pytest.raises(ValueError, match=r"train frame has columns \['price', 'hist'\] that are not declared.*ignore="):
        from_frames(train, categorical=["user", "item"])
    with pytest.raises(ValueError, match=r"valid frame has columns \['leak'\] that the train frame does not have"):
        from_frames(train, valid.assign(leak=1), numeric=["price"], ignore=["hist"])
    with pytest.raises(KeyError, match=r"no label column 'clicked'"):
        from_frames(train, label="clicked")
    with pytest.raises(ValueError, match=r"shares 'nope'"):
        from_frames(train, categorical=["user", "item"], numeric=["price"], sequences={"hist": {"max_len": 2,
                                                                                              "shares": "nope"}})


def test_bad_values_get_the_library_errors():
    train, valid = frames()
    with pytest.raises(ValueError, match=r"column 'price' holds 1 NaN"):
        from_frames(train.assign(price=[1.0, np.nan, 2.0, 3.0]), numeric=["price"], ignore=["hist"])
    with pytest.raises(ValueError, match=r"label 'label' must be 0/1"):
        from_frames(train.assign(label=[1, 5, 0, 0]), numeric=["price"], ignore=["hist"])


def test_files_keep_ids_as_strings(tmp_path):
    train, valid = frames()
    train = train.assign(zip=["007", "7", "007", "8"])
    valid = valid.assign(zip=["7", "007"])
    for name, df in (("train", train), ("valid", valid)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    d = from_files(tmp_path / "train.csv", tmp_path / "valid.csv", numeric=["price"],
                   sequences={"hist": {"max_len": 3, "shares": "item"}})
    assert set(d.vocabs["zip"].values) == {"007", "7", "8"}          # '007' and '7' stay two values
    assert d.oov_rate["valid"]["zip"] == 0.0
    with pytest.raises(FileNotFoundError, match="no such file"):
        from_files(tmp_path / "nope.csv")

"""load_bars on small files written in each BARS layout: headers, checksums, clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctrlib.data.bars import BARS, bars_available, load_bars, md5
from ctrlib.data.movielens import ChecksumMismatchError, CorruptDatasetError


def write_layout(folder, name, n=40, seed=0):
    """train/valid/test.csv with ``name``'s published columns (label first, as in the BARS files)."""
    spec, rng = BARS[name], np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(("train.csv", "valid.csv", "test.csv")):
        df = pd.DataFrame({"label": np.r_[0, 1, rng.integers(0, 2, n - 2)]})
        for c in spec.numeric:
            df[c] = rng.random(n).round(3)
        for c in spec.categorical:
            df[c] = rng.integers(0, 5 + i, n)                       # valid/test hold values train lacks
        df.to_csv(folder / f, index=False)
    return {f: md5(folder / f) for f in ("train.csv", "valid.csv", "test.csv")}


@pytest.mark.parametrize("name", list(BARS))
def test_each_layout_loads_with_its_columns(tmp_path, name):
    sums = write_layout(tmp_path / name, name)
    d = load_bars(name, tmp_path, checksums=sums)                   # root/<name>/ is found too
    spec = BARS[name]
    assert [f.name for f in d.schema.categorical] == list(spec.categorical)
    assert [f.name for f in d.schema.numeric] == list(spec.numeric)
    assert len(d.train) == len(d.valid) == len(d.test) == 40
    assert max(d.oov_rate["test"].values()) > 0                      # unseen test values -> OOV
    assert bars_available(name, tmp_path) and not bars_available(name, tmp_path / "elsewhere")


def test_published_checksums_reject_other_files(tmp_path):
    write_layout(tmp_path, "Frappe_x1")
    with pytest.raises(ChecksumMismatchError, match=r"md5 checksum mismatch for .*train.csv: expected "
                                                    r"ba7306e6c4fc19dd2cd84f2f0596d158"):
        load_bars("Frappe_x1", tmp_path)
    assert len(load_bars("frappe_x1", tmp_path, verify=False).train) == 40   # names are case-insensitive


def test_a_wrong_header_is_named(tmp_path):
    sums = write_layout(tmp_path, "Avazu_x1")
    df = pd.read_csv(tmp_path / "valid.csv").rename(columns={"feat_3": "feat_three"})
    df.to_csv(tmp_path / "valid.csv")                                # also adds an index column
    with pytest.raises(CorruptDatasetError, match=r"valid.csv: the header does not match.*missing \['feat_3'\], "
                                                  r"unexpected \['Unnamed: 0', 'feat_three'\]"):
        load_bars("Avazu_x1", tmp_path, checksums=sums)
    write_layout(tmp_path / "c", "Criteo_x1")
    with pytest.raises(CorruptDatasetError, match="header does not match"):
        load_bars("Frappe_x1", tmp_path / "c", verify=False)         # another dataset's files


def test_absent_files_and_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Frappe_x1: no train.csv.*huggingface.co/datasets/reczoo/Frappe_x1"):
        load_bars("Frappe_x1", tmp_path)
    with pytest.raises(ValueError, match=r"unknown BARS dataset 'Criteo_x4'.*'Criteo_x1'"):
        load_bars("Criteo_x4", tmp_path)


def test_labels_must_be_clicks(tmp_path):
    write_layout(tmp_path, "MovielensLatest_x1")
    df = pd.read_csv(tmp_path / "test.csv")
    df.loc[3, "label"] = 4
    df.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(CorruptDatasetError, match=r"test.csv: the label must be 0/1; 1 rows"):
        load_bars("MovielensLatest_x1", tmp_path, verify=False)

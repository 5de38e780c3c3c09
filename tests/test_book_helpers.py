import json

import pytest

from ctrlib.book import is_quick, record, results_table


def test_is_quick_reads_the_parameter_and_the_environment(monkeypatch):
    monkeypatch.delenv("CTRLIB_QUICK", raising=False)
    assert not is_quick(False) and is_quick(True)
    monkeypatch.setenv("CTRLIB_QUICK", "1")
    assert is_quick(False)


def test_record_merges_atomically(tmp_path):
    path = tmp_path / "r" / "chapter.json"
    record(path, models={"lr": {"auc": 0.7}})
    record(path, models={"fm": {"auc": 0.75}}, oracle={"auc": 0.8})
    data = json.loads(path.read_text())
    assert data == {"models": {"lr": {"auc": 0.7}, "fm": {"auc": 0.75}}, "oracle": {"auc": 0.8}}
    assert [p.name for p in path.parent.iterdir()] == ["chapter.json"]  # no temp file left behind
    record(None, models={})  # no path: nothing to do


def test_results_table_sorts_and_adds_the_oracle_gap():
    t = results_table({"lr": {"auc": 0.7}, "fm": {"auc": 0.75}}, {"auc": 0.8})
    assert list(t.index) == ["fm", "lr", "oracle"]
    assert t.loc["lr", "auc gap to oracle"] == pytest.approx(-0.1)

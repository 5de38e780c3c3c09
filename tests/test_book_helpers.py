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


def test_explorer_records_whether_its_output_changes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctrlib.book import explorer

    def curve(slope):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, slope])
        ax.set_ylim(-1, 3)
        return fig

    path = tmp_path / "r.json"
    explorer("slope", curve, path, slope=[0.5, 1.0, 2.0])
    explorer("stuck", lambda table: "the same text", path, table=["a", "b"])
    rec = json.loads(path.read_text())["explorers"]
    assert rec["slope"] == {"controls": {"slope": ["0.5", "1.0", "2.0"]}, "changes": True}
    assert rec["stuck"]["changes"] is False


def test_explorer_rejects_bad_controls():
    from ctrlib.book import explorer

    with pytest.raises(ValueError, match="at least one control"):
        explorer("x", lambda: "t")
    with pytest.raises(ValueError, match="'k' needs at least two values"):
        explorer("x", lambda k: "t", k=[1])
    with pytest.raises(ValueError, match="returned nothing"):
        explorer("x", lambda k: None, k=[1, 2])

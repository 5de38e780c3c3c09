"""The README's library example runs as written (on a smaller sample, so the test stays fast)."""
import re
from pathlib import Path


def test_readme_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Using ctrlib in your code.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace("world.sample(100_000, seed=1)", "world.sample(20_000, seed=1)").replace("epochs=5", "epochs=1")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'auc'" in out and "'gauc'" in out


def test_readme_own_data_example_runs_from_three_csv_files(tmp_path, monkeypatch, capsys):
    """The README's "Your own data" example: three CSV files to a test AUC in at most 10 lines."""

    from ctrlib.data import CTRWorld, split_by_time

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"### Your own data.*?```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    world = CTRWorld(seed=0, n_users=300, n_items=200)
    columns = ["user_id", "item_id", "category", "brand", "hour", "price", "label"]
    for name, df in zip(("train", "valid", "test"), split_by_time(world.sample(6000, seed=1))):
        df = df[columns].rename(columns={"label": "clicked"})
        df["user_id"] = "u" + df["user_id"].astype(str)              # raw string ids, as in a real log
        df["price"] = df["price"] / 10.0
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("epochs=20", "epochs=2"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    scores = eval(out.strip().splitlines()[-1])                       # the printed dict
    assert set(scores) == {"auc", "logloss"} and 0.5 < scores["auc"] <= 1

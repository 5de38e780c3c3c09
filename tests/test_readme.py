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

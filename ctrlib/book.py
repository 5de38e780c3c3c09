"""Notebook helpers: QUICK mode, showing library source, recording a chapter's headline metrics."""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def quick_from_env() -> bool:
    """The environment asks for QUICK mode: CTRLIB_QUICK is 1, true, yes or on."""
    return os.environ.get("CTRLIB_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def is_quick(quick: bool = False) -> bool:
    """QUICK mode is on if the notebook parameter says so or the environment sets CTRLIB_QUICK=1."""
    return bool(quick) or quick_from_env()


def show_source(obj) -> None:
    """Display the source code of a ctrlib class or function, syntax-highlighted."""
    from IPython.display import Markdown, display
    display(Markdown(f"```python\n{inspect.getsource(obj)}\n```"))


def results_table(results: dict[str, dict[str, float]], oracle: dict[str, float] | None = None,
                  metric: str = "auc") -> pd.DataFrame:
    """A results table, best first, with the oracle as the last row and each model's gap to it."""
    table = pd.DataFrame(results).T.sort_values(metric, ascending=(metric == "logloss"))
    if oracle is not None:
        table.loc["oracle"] = pd.Series(oracle)
        table[f"{metric} gap to oracle"] = table[metric] - oracle[metric]
    table.index.name = "model"
    return table


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value


def record(path: str | os.PathLike | None, **entries) -> None:
    """Merge ``entries`` into the chapter's results JSON at ``path`` (no-op when ``path`` is None).

    The book's tests read this file (``{"models": {name: {"auc": ..., ...}}, "oracle": {...}}``).
    Written atomically: a temp file in the same folder, then renamed over the target.
    """
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    for key, value in _jsonable(entries).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)

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


def _fingerprint(shown) -> str:
    """A short digest of what an explorer shows: a figure's pixels, a frame's values, or the text."""
    import hashlib

    if hasattr(shown, "canvas"):                      # a matplotlib Figure
        shown.canvas.draw()
        data = bytes(shown.canvas.buffer_rgba())
    elif isinstance(shown, (pd.DataFrame, pd.Series)):
        data = shown.to_csv().encode()
    else:
        data = repr(shown).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def explorer(name: str, update, results_path: str | os.PathLike | None = None, **controls):
    """An ``ipywidgets`` explorer over results the notebook has already computed.

    ``update(**values)`` returns what to show for one setting of the controls: a matplotlib
    Figure, a DataFrame, or a string (Markdown). ``controls`` maps each argument of ``update`` to
    the list of values its control offers (numbers give a slider, anything else a drop-down); the
    first value of each is the starting setting.

    The explorer shows the live widget (in Jupyter) and, below it, the static output for the
    starting setting (what the rendered book shows). It also drives its own callback once: at the
    starting setting and with every control moved to its last value, and records in the
    chapter's results JSON, under ``explorers[name]``, whether the output changed (``changes``),
    which the book's tests check. Returns the widget.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    if not controls:
        raise ValueError(f"explorer {name!r}: give at least one control, e.g. strength=[0.0, 0.5, 1.0]")
    options = {}
    for key, values in controls.items():
        values = list(values)
        if len(values) < 2:
            raise ValueError(f"explorer {name!r}: control {key!r} needs at least two values, got {values!r}")
        options[key] = values

    def show(shown):
        if hasattr(shown, "canvas"):
            display(shown)
            plt.close(shown)
        elif isinstance(shown, str):
            display(Markdown(shown))
        else:
            display(shown)

    def call(setting):
        shown = update(**setting)
        if shown is None:
            raise ValueError(f"explorer {name!r}: update() returned nothing; return a Figure, DataFrame or string")
        return shown

    first = {k: v[0] for k, v in options.items()}
    last = {k: v[-1] for k, v in options.items()}
    static, moved = call(first), call(last)
    changes = _fingerprint(static) != _fingerprint(moved)
    if hasattr(moved, "canvas"):
        plt.close(moved)

    def control(key, values):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return widgets.SelectionSlider(options=values, value=values[0], description=key, continuous_update=False)
        return widgets.Dropdown(options=values, value=values[0], description=key)

    boxes = {k: control(k, v) for k, v in options.items()}
    canvas = widgets.Output()

    def redraw(_change):
        with canvas:
            canvas.clear_output(wait=True)
            show(call({k: box.value for k, box in boxes.items()}))

    for box in boxes.values():
        box.observe(redraw, names="value")
    live = widgets.VBox([widgets.HBox(list(boxes.values())), canvas])
    display(live)
    display(Markdown(f"*Static view ({', '.join(f'{k} = {v}' for k, v in first.items())}); "
                     "in a running notebook, move the controls above to draw other settings.*"))
    show(static)
    record(results_path, explorers={name: {"controls": {k: [str(x) for x in v] for k, v in options.items()},
                                           "changes": bool(changes)}})
    return live

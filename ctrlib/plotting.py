"""One figure style for the whole book: learning curves, ablation bars, results against the oracle."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

PALETTE = "colorblind"


def use_book_style() -> None:
    """The book's look: seaborn's whitegrid, colour-blind palette, readable sizes."""
    sns.set_theme(style="whitegrid", palette=PALETTE, context="notebook",
                  rc={"figure.figsize": (7, 4), "figure.dpi": 100, "axes.titleweight": "bold",
                      "axes.spines.top": False, "axes.spines.right": False})


def learning_curves(histories: dict[str, pd.DataFrame], metric: str = "valid_auc", ax=None,
                    oracle: float | None = None, title: str | None = None):
    """One line per model: ``metric`` against the epoch; a dashed line at the oracle if given."""
    ax = ax or plt.subplots()[1]
    for name, h in histories.items():
        ax.plot(h["epoch"], h[metric], marker="o", label=name)
    if oracle is not None:
        ax.axhline(oracle, ls="--", c="k", lw=1, label="oracle")
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=title or f"{metric.replace('_', ' ')} by epoch")
    ax.legend(frameon=False, fontsize="small")
    return ax


def ablation_bars(df: pd.DataFrame, x: str, y: str = "auc", hue: str | None = None, ax=None,
                  oracle: float | None = None, title: str | None = None, ylabel: str | None = None):
    """Mean of ``y`` per ``x`` (and ``hue``) with error bars = one standard deviation over the
    rows of each group (e.g. seeds). The y-axis is zoomed to the data: read differences, not heights."""
    ax = ax or plt.subplots()[1]
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", capsize=0.1, ax=ax)
    lo, hi = df[y].min(), max(df[y].max(), oracle or -1)
    pad = 0.15 * (hi - lo) + 1e-3
    ax.set_ylim(lo - pad, hi + pad)
    if oracle is not None:
        ax.axhline(oracle, ls="--", c="k", lw=1, label="oracle")
        ax.legend(frameon=False, fontsize="small")
    ax.set(title=title, ylabel=ylabel or y)
    return ax


def results_vs_oracle(table: pd.DataFrame, metric: str = "auc", ax=None, title: str | None = None):
    """Horizontal bars of ``metric`` per model (index = model), the oracle as a dashed line."""
    ax = ax or plt.subplots()[1]
    models = table.drop(index="oracle", errors="ignore")
    sns.barplot(x=models[metric], y=models.index, ax=ax, orient="h")
    lo = models[metric].min()
    hi = table[metric].max()
    if "oracle" in table.index:
        ax.axvline(table.loc["oracle", metric], ls="--", c="k", lw=1.2, label="oracle (true p)")
        ax.legend(frameon=False, loc="lower right")
    ax.set_xlim(lo - 0.2 * (hi - lo) - 1e-3, hi + 0.05 * (hi - lo) + 1e-3)
    ax.set(xlabel=f"test {metric.upper()}", ylabel="", title=title)
    return ax

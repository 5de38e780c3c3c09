"""Splits by time: the future never leaks into training."""
from __future__ import annotations

import pandas as pd


def split_by_time(df: pd.DataFrame, valid: float = 0.1, test: float = 0.1, time_col: str = "timestamp"):
    """(train, valid, test): the last ``test`` share of time for test, the ``valid`` share before it.

    Rows are ordered by ``time_col`` (stable), then cut by position, so every training row is no
    later than every validation row, and so on.
    """
    if time_col not in df.columns:
        raise KeyError(f"no time column {time_col!r}; the frame has {list(df.columns)}")
    if not (0 <= valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"valid and test must be shares with valid + test < 1, got {valid}, {test}")
    df = df.sort_values(time_col, kind="stable").reset_index(drop=True)
    n = len(df)
    a, b = int(n * (1 - valid - test)), int(n * (1 - test))
    return df.iloc[:a].reset_index(drop=True), df.iloc[a:b].reset_index(drop=True), df.iloc[b:].reset_index(drop=True)

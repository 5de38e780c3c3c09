"""Checks at the library's boundaries: every error names the argument or column, the bad value(s)
or their count, and what to do. One small set, used by the schema, ``TensorData``, ``Vocab``,
``fit``/``evaluate``/``predict``, ``WorldConfig`` and the loaders.

Errors are the built-in types (``TypeError`` for a wrong kind of value, ``ValueError`` for a
wrong value, ``KeyError`` for a missing column), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

import difflib
import math
import numbers

import numpy as np
import pandas as pd


def examples(values, k: int = 5) -> str:
    """Up to ``k`` distinct values, e.g. ``[0.5, 2.5] (3 in all)``, for an error message."""
    unique = pd.unique(pd.Series(np.asarray(values, dtype=object).ravel())).tolist()
    shown = ", ".join(repr(v) for v in unique[:k])
    return f"[{shown}{', ...' if len(unique) > k else ''}]"


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int in [minimum, maximum], else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}){_hint(hint)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None
                  else f"in [{minimum}, {maximum}]")
        raise ValueError(f"{name} must be {bounds}, got {value}{_hint(hint)}")
    return int(value)


def real(name: str, value, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float within the bounds (open or closed), else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}){_hint(hint)}")
    v = float(value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or below or above:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        where = (f"in {lo}, {hi}" if low is not None and high is not None
                 else f"{'>' if low_open else '>='} {low}" if low is not None
                 else f"{'<' if high_open else '<='} {high}" if high is not None else "finite")
        raise ValueError(f"{name} must be {where}, got {value!r}{_hint(hint)}")
    return v


def choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else an error that lists them and suggests the nearest."""
    choices = list(choices)
    if value in choices:
        return value
    near = [c for c in choices if isinstance(value, str) and c.lower() == value.lower()] or \
        difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    raise ValueError(f"unknown {name} {value!r}: {name} must be one of {choices}"
                     + (f"; did you mean {near[0]!r}? (names are case-sensitive)" if near else ""))


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


# --- columns --------------------------------------------------------------------------------------

def finite_floats(name: str, values, what: str = "column") -> np.ndarray:
    """``values`` as float32 (a copy), or an error naming the column and the NaN/inf count."""
    try:
        arr = np.array(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} {name!r} must hold numbers; it holds {_kinds(values)} values, e.g. "
                        f"{examples(_non_numbers(values))} ({e})") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
        raise ValueError(f"{what} {name!r} holds {int(bad.sum())} NaN/inf values (rows {examples(rows)} "
                         f"of {len(arr)}); fill or drop them before building tensors")
    return arr


def labels(name: str, values) -> np.ndarray:
    """Click labels as float32: finite and in [0, 1] (0/1 clicks or probabilities)."""
    arr = finite_floats(name, values, "label")
    outside = (arr < 0) | (arr > 1)
    if outside.any():
        raise ValueError(f"label {name!r} must be 0/1 clicks (or probabilities in [0, 1]); "
                         f"{int(outside.sum())} of {len(arr)} values are outside, e.g. {examples(arr[outside])}. "
                         f"Binarise it first, e.g. (rating >= 4).astype(int), or (y + 1) / 2 for -1/+1 labels")
    return arr


def ids(name: str, values, vocab_size: int) -> np.ndarray:
    """Integer ids in [0, vocab_size) as int64 (a copy), or an error naming the column and the bad values."""
    arr = np.asarray(values)
    fix = "encode the column with ctrlib.data.Vocab (missing -> 0 = padding, unseen -> OOV)"
    if arr.dtype == object:
        kind = pd.api.types.infer_dtype(arr.ravel(), skipna=False)
        if kind not in ("integer", "floating", "mixed-integer-float"):
            raise TypeError(f"id column {name!r} must hold integer ids; it holds {_kinds(arr)} values, "
                            f"e.g. {examples(_non_numbers(arr))}: {fix}")
        arr = arr.astype(np.int64 if kind == "integer" else np.float64)  # int64 keeps ids above 2**53 exact
    if arr.dtype.kind == "b":
        raise TypeError(f"id column {name!r} holds booleans, and id 0 is padding (False would vanish): {fix}, "
                        f"or use astype(int) + 1")
    if arr.dtype.kind in "US":
        raise TypeError(f"id column {name!r} must hold integer ids; it holds strings, e.g. {examples(arr)}: {fix}")
    if arr.dtype.kind == "f":
        missing = ~np.isfinite(arr)
        if missing.any():
            raise ValueError(f"id column {name!r} holds {int(missing.sum())} missing (NaN) or infinite ids "
                             f"of {arr.size}: {fix}")
        fraction = arr != np.floor(arr)
        if fraction.any():
            raise ValueError(f"id column {name!r} holds {int(fraction.sum())} non-integral ids, e.g. "
                             f"{examples(arr[fraction])}; ids are row numbers, not values: {fix}")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"id column {name!r} must hold integer ids, got dtype {arr.dtype}: {fix}")
    out = np.array(arr, dtype=np.int64)
    if out.size:
        outside = (out < 0) | (out >= vocab_size)
        if outside.any():
            raise ValueError(f"feature {name!r} has {int(outside.sum())} ids outside its vocabulary "
                             f"[0, {vocab_size}), e.g. {examples(out[outside])} (ids in [{int(out.min())}, "
                             f"{int(out.max())}]): {fix}, or raise vocab_size")
    return out


def column_values(name: str, values) -> np.ndarray:
    """A carried (extra) column as a numeric or bool array (a copy), or an error naming it."""
    arr = np.array(values)
    if arr.dtype.kind in "biuf":
        return arr
    kind = pd.api.types.infer_dtype(arr.ravel(), skipna=False)
    if kind in ("integer", "floating", "mixed-integer-float"):
        return arr.astype(np.float64 if kind != "integer" else np.int64)
    raise TypeError(f"column {name!r} must hold numbers to become a tensor; it holds {_kinds(arr)} values, "
                    f"e.g. {examples(_non_numbers(arr))}: encode it first (e.g. with ctrlib.data.Vocab)")


def _kinds(values) -> str:
    return ", ".join(sorted({type(v).__name__ for v in np.asarray(values, dtype=object).ravel()[:10_000]}))


def _non_numbers(values) -> np.ndarray:
    flat = np.asarray(values, dtype=object).ravel()
    odd = [v for v in flat[:10_000] if isinstance(v, (str, bytes)) or not isinstance(v, numbers.Number)]
    return np.asarray(odd or flat[:5], dtype=object)

"""Each chapter, executed in QUICK mode, records metrics that fall in sensible bands.

Every chapter writes `{"models": {name: {"auc": ..., "logloss": ...}}, "oracle": {...}}` to
RESULTS_PATH (see ctrlib.book.record). Generic checks apply to all chapters; chapter-specific
bands go in BANDS below.
"""
from __future__ import annotations

import json
import math
from typing import Callable

import pytest

import build_book

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

NOTEBOOKS = build_book.chapter_notebooks()
AUC_TOL = 0.002  # sampling noise allowed above the oracle on a finite test set


def load(results_dir, stem) -> dict:
    path = results_dir / f"{stem}.json"
    assert path.exists(), f"{stem} recorded no results at {path} (did it run and call record?)"
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Chapter-specific bands: notebook stem -> function(results) that asserts.
# Keep each band loose enough for QUICK mode (less data, fewer epochs). Chapters without an
# entry are reported as skipped. Example:
#
#   def _bands_02(res):
#       m = res["models"]
#       assert m["DeepFM"]["auc"] > m["LR"]["auc"], "DeepFM should beat LR"
#
#   BANDS = {"02_feature_interactions": _bands_02}
# ---------------------------------------------------------------------------------------------
BANDS: dict[str, Callable[[dict], None]] = {}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_results_shape(book_results, nb):
    res = load(book_results, nb.stem)
    assert isinstance(res.get("models"), dict) and res["models"], "results need a non-empty 'models' dict"
    for name, m in res["models"].items():
        for key in ("auc", "logloss"):
            assert key in m, f"model {name} lacks {key}"
            assert isinstance(m[key], (int, float)) and math.isfinite(m[key]), f"{name}.{key} = {m[key]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_generic_bands(book_results, nb):
    res = load(book_results, nb.stem)
    models = res["models"]
    oracle = res.get("oracle") or models.get("oracle")
    for name, m in models.items():
        assert 0.5 < m["auc"] <= 1.0, f"{name}: AUC {m['auc']:.4f} is no better than chance"
        assert m["logloss"] > 0, f"{name}: logloss {m['logloss']}"
        if oracle and name != "oracle":
            assert m["auc"] <= oracle["auc"] + AUC_TOL, (
                f"{name}: AUC {m['auc']:.4f} beats the oracle {oracle['auc']:.4f}")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_chapter_bands(book_results, nb):
    if nb.stem not in BANDS:
        pytest.skip(f"no chapter-specific bands for {nb.stem} yet")
    BANDS[nb.stem](load(book_results, nb.stem))

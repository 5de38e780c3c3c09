"""Shared fixtures. The book is executed (QUICK mode) and rendered once per test session."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import build_book  # tools/build_book.py (pytest `pythonpath` setting)

ROOT = build_book.ROOT
TEST_OUT = ROOT / "_build" / "test"   # separate from _build/ so tests never clobber the real book


@dataclass
class BookBuild:
    returncode: int
    log: Path          # full output of tools/build_book.py
    results: Path      # <stem>.json per chapter + timings.json
    html: Path         # rendered book
    stage: Path        # executed notebooks

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def book_build() -> BookBuild:
    """Run `tools/build_book.py --quick` once: every chapter executed by papermill, strict render."""
    lay = build_book.Layout(TEST_OUT)
    lay.out.mkdir(parents=True, exist_ok=True)
    log = lay.out / "build.log"
    with open(log, "w") as f:
        rc = subprocess.call(
            [sys.executable, str(ROOT / "tools" / "build_book.py"), "--quick", "--out", str(lay.out)],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=45 * 60,
        )
    return BookBuild(rc, log, lay.results, lay.html, lay.stage)


@pytest.fixture(scope="session")
def book_results(book_build: BookBuild) -> Path:
    """Folder holding each chapter's recorded metrics (<notebook stem>.json)."""
    return book_build.results


def pytest_collection_modifyitems(items):
    """Fast tests first; the notebook/book tests (sharing one build) run last."""
    items.sort(key=lambda item: item.get_closest_marker("notebooks") is not None)

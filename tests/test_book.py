"""The book executes (QUICK mode) and renders with a strict Jupyter Book build."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest

import build_book

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc=\"([^\"]+)\"", re.IGNORECASE)
MATHJAX_URL = re.compile(r"(?:https?:)?//[^\s\"'<>]*mathjax", re.IGNORECASE)  # a MathJax CDN / remote URL


def test_python3_kernel_is_this_venv():
    """papermill's `python3` kernel must run this interpreter, not a user-level kernelspec."""
    build_book.use_venv_kernel()  # exits if the kernel points elsewhere
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    assert os.path.abspath(argv0).startswith(os.path.abspath(sys.prefix) + os.sep), argv0


def test_book_builds(book_build):
    assert book_build.returncode == 0, f"book build failed:\n{book_build.log_tail()}"
    html = book_build.html
    assert (html / "index.html").exists()
    pages = [html / f"{entry}.html" for entry in build_book.toc_entries()]
    missing = [str(p.relative_to(html)) for p in pages if not p.exists()]
    assert not missing, f"pages missing from the rendered book: {missing}"

    for page in pages:
        text = page.read_text(errors="replace")
        assert "Traceback" not in text, f"{page.name} shows a traceback"
        for src in IMG_SRC.findall(text):
            if src.startswith(("http://", "https://", "data:")):
                continue
            target = (page.parent / src.split("#")[0].split("?")[0]).resolve()
            assert target.exists(), f"{page.name}: image {src} is missing"


def test_chapters_have_figures(book_build):
    """Every executed chapter shows at least one figure (a rendered PNG/SVG output)."""
    assert book_build.returncode == 0, f"book build failed:\n{book_build.log_tail()}"
    for nb in build_book.chapter_notebooks():
        page = book_build.html / nb.relative_to(build_book.ROOT).with_suffix(".html")
        imgs = [s for s in IMG_SRC.findall(page.read_text()) if "_images/" in s]
        assert imgs, f"{page.name} has no figure"


def test_mathjax_is_served_locally(book_build):
    """Equations render offline: every page loads MathJax from the book's _static/mathjax (installed
    from the sphinx-mathjax-offline package), and no page references a remote MathJax."""
    assert book_build.returncode == 0, f"book build failed:\n{book_build.log_tail()}"
    html = book_build.html
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "no local MathJax under _static/mathjax"
    pages = sorted(html.rglob("*.html"))
    remote = {p.relative_to(html).as_posix(): MATHJAX_URL.findall(p.read_text(errors="replace"))
              for p in pages}
    remote = {k: v for k, v in remote.items() if v}
    assert not remote, f"pages referencing a remote MathJax: {remote}"
    chapter = html / "book" / "01_ctr_world.html"  # has display equations
    assert "_static/mathjax/tex-chtml.js" in chapter.read_text(), "chapter 01 does not load the local MathJax"


def test_execution_statistics_page(book_build):
    """The back matter's statistics page lists every chapter with its QUICK time from this build."""
    assert book_build.returncode == 0, f"book build failed:\n{book_build.log_tail()}"
    staged = (book_build.stage / build_book.STATS_PAGE).read_text()
    timings = json.loads((book_build.results / "timings.json").read_text())
    quick = timings["modes"]["QUICK"]["chapters"]
    for nb in build_book.chapter_notebooks():
        row = next((ln for ln in staged.splitlines() if f"{{doc}}`{nb.stem}`" in ln), None)
        assert row, f"{nb.stem} has no row on the statistics page"
        assert build_book._duration(quick[nb.stem]["seconds"]) in row, row
    page = (book_build.html / build_book.STATS_PAGE).with_suffix(".html").read_text()
    assert "Execution statistics" in page and "QUICK mode" in page

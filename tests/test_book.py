"""The book executes (QUICK mode) and renders with a strict Jupyter Book build."""
from __future__ import annotations

import os
import re
import sys

import pytest

import build_book

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc=\"([^\"]+)\"", re.IGNORECASE)


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

"""Book hygiene: notebooks committed clean, a literal `parameters` cell, toc and citations consistent."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
from pybtex.database import parse_file

import build_book

ROOT = build_book.ROOT
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
MARKDOWN = sorted(BOOK.glob("*.md"))
REQUIRED_PARAMETERS = {"QUICK", "SEED", "RESULTS_PATH"}
# {cite}`a,b`  {cite:p}`a`  {cite:t}`a`  {cite:ps}`a` ...
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
LITERAL = re.compile(r"``.+?``", re.DOTALL)  # ``{cite}`key` `` shows the syntax, cites nothing

ids = [nb.stem for nb in NOTEBOOKS]


def read(nb: Path):
    return nbformat.read(nb, as_version=4)


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks under book/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_valid_notebook(nb):
    nbformat.validate(read(nb))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_no_outputs(nb):
    """Committed without outputs or execution counts (executed copies live in _build/)."""
    dirty = [i for i, c in enumerate(read(nb).cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_kernelspec(nb):
    assert read(nb).metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_parameters_cell(nb):
    """Exactly one `parameters` cell, the first code cell, holding only `NAME = <literal>`."""
    code = [c for c in read(nb).cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    assert code[0] is tagged[0], "the 'parameters' cell must be the first code cell"

    names = set()
    for stmt in ast.parse(tagged[0].source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        else:
            raise AssertionError(f"not a plain assignment: {ast.unparse(stmt)!r}")
        assert isinstance(target, ast.Name), f"assign to a plain name: {ast.unparse(stmt)!r}"
        try:
            ast.literal_eval(stmt.value)
        except ValueError:
            raise AssertionError(f"{target.id} must be a literal (derive values in the next cell)") from None
        names.add(target.id)
    assert REQUIRED_PARAMETERS <= names, f"parameters cell lacks {REQUIRED_PARAMETERS - names}"


def test_toc_matches_book():
    """Every notebook is in _toc.yml and every toc entry exists."""
    entries = build_book.toc_entries()
    missing = [e for e in entries
               if not (ROOT / f"{e}.ipynb").exists() and not (ROOT / f"{e}.md").exists()]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    listed = {ROOT / f"{e}.ipynb" for e in entries}
    orphans = [nb.name for nb in NOTEBOOKS if nb not in listed]
    assert not orphans, f"notebooks missing from _toc.yml: {orphans}"


def _texts():
    """(file name, text) of every markdown file and every notebook cell."""
    for md in MARKDOWN:
        yield md.name, md.read_text()
    for nb in NOTEBOOKS:
        for cell in read(nb).cells:
            yield nb.name, cell.source


def test_citations_resolve():
    bib = parse_file(str(BOOK / "references.bib"))
    keys = set(bib.entries.keys())
    unknown = sorted({(name, key.strip())
                      for name, text in _texts()
                      for group in CITE.findall(LITERAL.sub("", text)) for key in group.split(",")
                      if key.strip() not in keys})
    assert not unknown, f"citation keys missing from book/references.bib: {unknown}"


def test_no_footcite():
    """{footcite} breaks the strict build with myst (no footnote definitions found): use {cite}."""
    bad = sorted({name for name, text in _texts() if "{footcite" in text or "{footbibliography" in text})
    assert not bad, f"use {{cite}} and the References page instead of footcite in: {bad}"

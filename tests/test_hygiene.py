"""Book hygiene: notebooks committed clean, the Colab cell first, a literal `parameters` cell, code
lines that fit the page, toc and citations consistent."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from pybtex.database import parse_file

import build_book
import colab_cell  # tools/colab_cell.py

ROOT = build_book.ROOT
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
MARKDOWN = sorted(BOOK.glob("*.md"))
REQUIRED_PARAMETERS = {"QUICK", "SEED", "RESULTS_PATH"}
MAX_CODE_LINE = 100  # characters: longer lines are cut off at the right edge of a rendered page
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


def is_colab_cell(cell) -> bool:
    return colab_cell.TAG in cell.metadata.get("tags", [])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_colab_cell_first(nb):
    """The first cell is the Colab install cell, hidden in the book, naming the URL of _config.yml."""
    first = read(nb).cells[0]
    assert first.cell_type == "code" and is_colab_cell(first), (
        "the first cell must be the Colab install cell: run `python tools/colab_cell.py`")
    assert "remove-cell" in first.metadata["tags"], "the Colab cell must be tagged remove-cell"
    assert first.source == colab_cell.cell_source(colab_cell.install_target()), (
        "the Colab cell is out of date with _config.yml: run `python tools/colab_cell.py`")


def run_colab_cell(source: str, monkeypatch, in_colab: bool) -> list:
    """Execute a Colab cell with subprocess.run recorded (nothing is installed); the commands run."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "colab-cell", "exec"), {})
    return calls


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_colab_cell_installs_only_under_colab(nb, monkeypatch):
    """Under (a faked) Colab the cell pip-installs ctrlib from _config.yml's repository; elsewhere
    it runs nothing."""
    first = read(nb).cells[0]
    if not is_colab_cell(first):
        pytest.fail("no Colab cell: run `python tools/colab_cell.py`")
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    calls = run_colab_cell(first.source, monkeypatch, in_colab=True)
    assert len(calls) == 1, f"under Colab the cell should run one command, ran {calls}"
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"], cmd
    assert f"git+{repo['url']}@{repo['branch']}" in cmd, f"{cmd} does not install {repo['url']}"
    assert run_colab_cell(first.source, monkeypatch, in_colab=False) == [], "outside Colab the cell must do nothing"


def test_colab_cell_tool_is_idempotent(tmp_path):
    """tools/colab_cell.py inserts the cell once, first, and a second run changes nothing."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"),
                                         nbformat.v4.new_code_cell("QUICK = False", metadata={"tags": ["parameters"]})])
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    assert colab_cell.main(["--check", str(path)]) == 1
    assert colab_cell.main([str(path)]) == 0
    once = path.read_text()
    assert colab_cell.main([str(path)]) == 0 and path.read_text() == once
    assert colab_cell.main(["--check", str(path)]) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert [is_colab_cell(c) for c in cells] == [True, False, False]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_parameters_cell(nb):
    """Exactly one `parameters` cell, the first code cell after the Colab cell, holding only
    `NAME = <literal>`."""
    code = [c for c in read(nb).cells if c.cell_type == "code" and not is_colab_cell(c)]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    assert code[0] is tagged[0], "the 'parameters' cell must be the first code cell after the Colab cell"

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


def test_code_lines_fit_the_page():
    """Chapter code lines are at most MAX_CODE_LINE characters (longer ones are cut off in the book)."""
    long = [f"{nb.stem} cell {i} line {j + 1} ({len(line)} chars): {line.strip()[:60]}..."
            for nb in NOTEBOOKS for i, cell in enumerate(read(nb).cells) if cell.cell_type == "code"
            for j, line in enumerate(cell.source.splitlines()) if len(line) > MAX_CODE_LINE]
    assert not long, f"{len(long)} code lines longer than {MAX_CODE_LINE} characters:\n" + "\n".join(long)


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

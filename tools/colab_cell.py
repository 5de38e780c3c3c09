#!/usr/bin/env python
"""Insert or update the Colab install cell at the top of every chapter notebook.

    python tools/colab_cell.py                 # every book/*.ipynb
    python tools/colab_cell.py book/05_*.ipynb # some chapters
    python tools/colab_cell.py --check         # exit 1 if a notebook lacks the current cell

The cell is the first cell of the notebook, tagged `remove-cell` (the rendered book hides it) and
`colab-install` (how this script finds it again). Under Colab it pip-installs ctrlib from the
repository named in _config.yml (`repository.url` at `repository.branch`); anywhere else it does
nothing. Run this script again after changing the URL: it rewrites the cell in place (idempotent).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-install"
TAGS = ["remove-cell", TAG]


def install_target(root: Path = ROOT) -> str:
    """`git+URL@BRANCH` of the book's repository, from _config.yml."""
    repo = (yaml.safe_load((root / "_config.yml").read_text()) or {}).get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch") or "main"
    if not url or not str(url).startswith("https://"):
        raise ValueError(f"_config.yml: repository.url must be the book's https:// repository URL, got {url!r}")
    return f"git+{str(url).rstrip('/')}@{branch}"


def cell_source(target: str) -> str:
    return (
        "# Colab only: install ctrlib from the book's repository (elsewhere this cell does nothing).\n"
        "import subprocess, sys\n"
        "if \"google.colab\" in sys.modules:\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
        f"                    \"{target}\"], check=True)"
    )


def apply(nb, source: str) -> bool:
    """Make the Colab cell (with `source`) the first cell of `nb`; True if the notebook changed."""
    found = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
    if (len(found) == 1 and nb.cells[0] is found[0] and found[0].source == source
            and found[0].metadata.get("tags") == TAGS and not found[0].get("outputs")):
        return False
    for cell in found:
        nb.cells.remove(cell)
    cell = found[0] if found else nbformat.v4.new_code_cell()
    cell.source, cell.outputs, cell.execution_count = source, [], None
    cell.metadata["tags"] = list(TAGS)
    nb.cells.insert(0, cell)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every book/*.ipynb")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of date")
    args = ap.parse_args(argv)
    try:
        source = cell_source(install_target())
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    stale = []
    for path in args.notebooks or sorted((ROOT / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if apply(nb, source):
            stale.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "out of date" if args.check else "updated"
    for path in stale:
        print(f"{verb}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

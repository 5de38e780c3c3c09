#!/usr/bin/env python
"""Execute every chapter once with papermill, then render the book with Jupyter Book.

    python tools/build_book.py                 # full mode, then render _build/html
    python tools/build_book.py --quick         # QUICK mode (also: CTRLIB_QUICK=1)
    python tools/build_book.py --only 02_feature_interactions --no-render

Layout of the output folder (--out, default _build/):
    stage/      what Jupyter Book renders: _config.yml, _toc.yml, book/ with the *executed* notebooks
    results/    <notebook stem>.json written by each chapter (RESULTS_PATH), timings.json
    _build/html the rendered book; for the default --out this is simply ./_build/html
                (Jupyter Book always writes <path-output>/_build/html)
The tests build into _build/test so they never overwrite the full-mode book.

Notebooks run with cwd = their folder in the source tree (book/), so relative paths such as
../data work as they do interactively. A failing cell fails the build and nothing is rendered.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ctrlib.book import quick_from_env

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = int(os.environ.get("CTRLIB_CELL_TIMEOUT", "1200"))  # seconds per cell (raise it on a busy machine)
KERNEL = "python3"


@dataclass
class Layout:
    """Where one build writes; `out` is _build for the real book."""
    out: Path

    @property
    def stage(self) -> Path:
        return self.out / "stage"

    @property
    def results(self) -> Path:
        return self.out / "results"

    @property
    def path_output(self) -> Path:  # jupyter-book --path-output
        return ROOT if self.out == ROOT / "_build" else self.out

    @property
    def html(self) -> Path:
        return self.path_output / "_build" / "html"


def toc_entries(root: Path = ROOT) -> list[str]:
    """Every document of _toc.yml (root first), as paths without suffix, e.g. 'book/intro'."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return [str(Path(e).with_suffix("")) if Path(e).suffix in {".md", ".ipynb"} else e for e in entries]


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks listed in _toc.yml, in book order."""
    return [root / f"{e}.ipynb" for e in toc_entries(root) if (root / f"{e}.ipynb").exists()]


def use_venv_kernel() -> None:
    """Make papermill's `python3` kernel the one of the python running this script.

    Kernelspecs under sys.prefix come first on JUPYTER_PATH, so a user-level `python3`
    kernelspec cannot redirect the chapters to another interpreter.
    """
    ours = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != ours]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([ours, *paths])
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    if not os.path.abspath(argv0).startswith(os.path.abspath(sys.prefix) + os.sep):
        sys.exit(f"kernel '{KERNEL}' runs {argv0}, not this environment ({sys.prefix}).\n"
                 f"Fix: {sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}")


def stage_sources(lay: Layout, keep: dict[str, bytes]) -> None:
    """Fresh staging tree: config, toc and book/ without notebooks (executed copies come later).

    `keep` maps relative notebook paths to previously executed copies to put back
    (used with --only, so the other chapters keep their last executed version).
    """
    shutil.rmtree(lay.stage, ignore_errors=True)
    lay.stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, lay.stage / name)
    shutil.copytree(ROOT / "book", lay.stage / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__"))
    for rel, data in keep.items():
        (lay.stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (lay.stage / rel).write_bytes(data)


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell `remove-cell`: no absolute paths in the book."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


def execute(lay: Layout, nb: Path, quick: bool) -> float:
    """Run one notebook with papermill into the staging tree; returns wall seconds."""
    import papermill as pm

    rel = nb.relative_to(ROOT)
    out = lay.stage / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    results_path = lay.results / f"{nb.stem}.json"
    results_path.unlink(missing_ok=True)  # never let a stale result pass a test
    t0 = time.perf_counter()
    pm.execute_notebook(
        str(nb), str(out),
        parameters={"QUICK": quick, "RESULTS_PATH": str(results_path)},
        kernel_name=KERNEL,
        cwd=str(nb.parent),
        log_output=True,
        progress_bar=False,
        execution_timeout=CELL_TIMEOUT_S,
    )
    seconds = time.perf_counter() - t0
    hide_injected_parameters(out)
    return seconds


def render(lay: Layout) -> int:
    """Strict Jupyter Book build of the staging tree into lay.html."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(lay.stage), "--path-output", str(lay.path_output), "-W", "--keep-going"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="QUICK mode (also set by CTRLIB_QUICK=1)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="execute only notebooks whose stem contains NAME (repeatable); "
                         "the others keep their last executed copy, or render unexecuted")
    ap.add_argument("--no-render", action="store_true", help="execute only, skip Jupyter Book")
    ap.add_argument("--out", type=Path, default=ROOT / "_build", help="output folder (default: _build)")
    args = ap.parse_args(argv)
    lay = Layout(args.out.resolve())

    quick = args.quick or quick_from_env()
    if quick:
        os.environ["CTRLIB_QUICK"] = "1"  # the kernel inherits it
    os.environ["CTRLIB_HEADLESS"] = "1"  # no progress bars in executed pages
    notebooks = chapter_notebooks()
    selected = [nb for nb in notebooks if not args.only or any(s in nb.stem for s in args.only)]
    if args.only and not selected:
        print(f"no notebook in _toc.yml matches {args.only}", file=sys.stderr)
        return 2

    # Keep executed copies of the notebooks we are not re-running.
    keep = {}
    for nb in notebooks:
        rel = nb.relative_to(ROOT)
        if nb not in selected:
            old = lay.stage / rel
            keep[str(rel)] = old.read_bytes() if old.exists() else nb.read_bytes()
    stage_sources(lay, keep)
    lay.results.mkdir(parents=True, exist_ok=True)
    use_venv_kernel()

    mode = "QUICK" if quick else "full"
    timings, failed = {}, []
    for nb in selected:
        print(f"\n=== executing {nb.relative_to(ROOT)} ({mode} mode) ===", flush=True)
        try:
            timings[nb.stem] = round(execute(lay, nb, quick), 1)
            print(f"=== {nb.stem}: {timings[nb.stem]:.1f} s ===", flush=True)
        except Exception as exc:  # papermill raises on the first failing cell
            failed.append(nb.stem)
            print(f"=== {nb.stem} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    # Merge with earlier timings of the same mode (useful with --only).
    tfile = lay.results / "timings.json"
    old = json.loads(tfile.read_text()) if tfile.exists() else {}
    seconds = old.get("seconds", {}) if old.get("quick") == quick else {}
    seconds.update(timings)
    tfile.write_text(json.dumps({"quick": quick, "seconds": seconds}, indent=2) + "\n")

    print("\nwall time per notebook:")
    for stem, s in timings.items():
        print(f"  {stem:40s} {s:8.1f} s")
    if failed:
        print(f"\nFAILED notebooks: {', '.join(failed)} (book not rendered)", file=sys.stderr)
        return 1
    if args.no_render:
        return 0
    return render(lay)


if __name__ == "__main__":
    sys.exit(main())

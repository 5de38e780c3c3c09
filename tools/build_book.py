#!/usr/bin/env python
"""Execute every chapter once with papermill, then render the book with Jupyter Book.

    python tools/build_book.py                 # full mode, then render _build/html
    python tools/build_book.py --quick         # QUICK mode (also: CTRLIB_QUICK=1)
    python tools/build_book.py --only 02_feature_interactions --no-render

Layout of the output folder (--out, default _build/):
    stage/      what Jupyter Book renders: _config.yml, _toc.yml, book/ with the *executed* notebooks
    results/    <notebook stem>.json written by each chapter (RESULTS_PATH), timings.json (seconds per
                chapter in QUICK and full mode, with the machine and library versions: the book's
                execution statistics page is generated from it)
    _build/html the rendered book; for the default --out this is simply ./_build/html
                (Jupyter Book always writes <path-output>/_build/html)
The tests build into _build/test so they never overwrite the full-mode book.

Notebooks run with cwd = their folder in the source tree (book/), so relative paths such as
../data work as they do interactively. A failing cell fails the build and nothing is rendered.

The kernels run with OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS = the available cores (unless
the environment sets them): spinning OpenMP threads make a chapter several times slower when
another job shares the CPU. --omp-default leaves both as the environment has them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from ctrlib.book import quick_from_env

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = int(os.environ.get("CTRLIB_CELL_TIMEOUT", "1200"))  # seconds per cell (raise it on a busy machine)
KERNEL = "python3"
STATS_PAGE = "book/execution_statistics.md"  # back matter, generated from timings.json
VERSIONS = ("torch", "numpy", "pandas", "scikit-learn", "ctrlib", "papermill", "jupyter-book")


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


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def kernel_environment(environ=os.environ) -> dict[str, str]:
    """The OpenMP settings the chapters' kernels start with; a value the environment already has wins.

    PASSIVE: a waiting OpenMP thread sleeps instead of spinning; spinning threads that lose their
    core to another job stall every parallel region (chapter 02 in full mode took 7.4x its idle
    time beside one competing process). One thread per available core. Both are read when torch
    and numpy load, so they must be in the kernel's environment, not set inside a notebook.
    """
    wanted = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(available_cores())}
    return {k: environ.get(k) or v for k, v in wanted.items()}


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


def machine() -> dict:
    """What the timings were measured on: CPU, cores, memory, OS, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    meminfo = Path("/proc/meminfo")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    mem = None
    if meminfo.exists():
        total = next((ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal")), "")
        mem = round(int(total.split()[1]) / 2**20, 1) if total else None

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": available_cores(), "memory_gib": mem, "os": platform.platform(),
            "python": platform.python_version(), "versions": {p: version(p) for p in VERSIONS}}


def update_timings(path: Path, mode: str, seconds: dict[str, float], started: dict[str, dict],
                   kernel_env: dict[str, str]) -> dict:
    """Merge this build's seconds per chapter into timings.json (atomic write) and return it.

    ``{"modes": {"QUICK"|"full": {"chapters": {stem: {"seconds", "when", "load_1min"}},
    "machine": ..., "kernel_env": ...}}, "quick": bool, "seconds": {...}}``: each mode keeps the
    chapters measured in earlier builds (e.g. with --only); the top-level "quick" and "seconds" are
    the mode of this build (the older format).
    """
    old = json.loads(path.read_text()) if path.exists() else {}
    modes = old.get("modes", {})
    if not modes and old.get("seconds"):  # the older format: one mode, seconds only
        modes[("QUICK" if old.get("quick") else "full")] = {
            "chapters": {k: {"seconds": v, "when": None, "load_1min": None} for k, v in old["seconds"].items()}}
    entry = modes.setdefault(mode, {"chapters": {}})
    for stem, s in seconds.items():
        entry["chapters"][stem] = {"seconds": s, **started[stem]}
    entry["machine"], entry["kernel_env"] = machine(), kernel_env
    data = {"modes": modes, "quick": mode == "QUICK",
            "seconds": {k: v["seconds"] for k, v in entry["chapters"].items()}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def statistics_page(timings: dict, notebooks: list[Path]) -> str:
    """The back-matter page: seconds per chapter in QUICK and full mode, and what they ran on."""
    modes = timings.get("modes", {})
    lines = ["# Execution statistics", "",
             "How long each chapter took to execute when this book was built (papermill, one kernel per",
             "chapter, one chapter at a time), in QUICK mode (what `make test` runs) and in full mode (what",
             "`make book` runs), with the machine's 1-minute load average when the chapter started: a load",
             "above the number of cores means other jobs shared the CPU, and the time is inflated.",
             "Generated by `tools/build_book.py` from `results/timings.json` of the build folder; a dash",
             "means the chapter has not been executed in that mode there.", "",
             "| Chapter | QUICK mode | load at start | full mode | load at start |", "|---|---|---|---|---|"]
    for nb in notebooks:
        cells = []
        for mode in ("QUICK", "full"):
            run = modes.get(mode, {}).get("chapters", {}).get(nb.stem)
            load = run and run.get("load_1min")
            cells += [_duration(run["seconds"]), "—" if load is None else f"{load:.1f}"] if run else ["—", "—"]
        lines.append(f"| {{doc}}`{nb.stem}` | " + " | ".join(cells) + " |")
    for mode in ("QUICK", "full"):
        entry = modes.get(mode)
        if not entry or not entry.get("machine"):
            continue
        m, env = entry["machine"], entry.get("kernel_env", {})
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        when = sorted(c["when"] for c in entry["chapters"].values() if c.get("when"))
        span = f" ({when[0][:10]} to {when[-1][:10]})" if when else ""
        lines += ["", f"**{mode} mode**{span}: {m['cpu']}, {m['cores']} "
                  f"core(s) available, {m['memory_gib']} GiB memory, {m['os']}; Python {m['python']}, "
                  f"{versions}. Kernel environment: "
                  + (", ".join(f"`{k}={v}`" for k, v in env.items()) or "as inherited") + "."]
    if not modes:
        lines += ["", "*No timings: this copy of the book was rendered without executing the chapters.*"]
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--omp-default", action="store_true",
                    help="leave OMP_WAIT_POLICY / OMP_NUM_THREADS as the environment has them "
                         "(default: PASSIVE, one thread per core; benchmarks/bench_contention.py)")
    args = ap.parse_args(argv)
    lay = Layout(args.out.resolve())

    quick = args.quick or quick_from_env()
    if quick:
        os.environ["CTRLIB_QUICK"] = "1"  # the kernel inherits it
    os.environ["CTRLIB_HEADLESS"] = "1"  # no progress bars in executed pages
    kernel_env = {} if args.omp_default else kernel_environment()
    os.environ.update(kernel_env)  # the kernels papermill starts inherit it
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
    timings, started, failed = {}, {}, []
    for nb in selected:
        print(f"\n=== executing {nb.relative_to(ROOT)} ({mode} mode) ===", flush=True)
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        started[nb.stem] = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_1min": load}
        try:
            timings[nb.stem] = round(execute(lay, nb, quick), 1)
            print(f"=== {nb.stem}: {timings[nb.stem]:.1f} s ===", flush=True)
        except Exception as exc:  # papermill raises on the first failing cell
            failed.append(nb.stem)
            print(f"=== {nb.stem} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    # Merge with earlier timings (both modes are kept; --only keeps the other chapters').
    data = update_timings(lay.results / "timings.json", mode, timings, started, kernel_env)
    (lay.stage / STATS_PAGE).write_text(statistics_page(data, notebooks))

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

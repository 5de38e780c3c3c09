#!/usr/bin/env python
"""A chapter's execution time alone and beside one competing process, with and without the
kernel environment of tools/build_book.py (issue 21).

    python benchmarks/bench_contention.py                      # chapter 01, QUICK, 3 rounds
    python benchmarks/bench_contention.py --chapter 02_feature --repeats 3 --out _build/bench/contention.jsonl

Four arms, each run as `tools/build_book.py --only CHAPTER --no-render` in a fresh process (the time
is papermill's execution of the notebook, from the build's timings.json):

    policy  "before": --omp-default with OMP_WAIT_POLICY / OMP_NUM_THREADS unset (torch's default:
                      one spinning OpenMP thread per core)
            "after":  build_book's kernel environment (OMP_WAIT_POLICY=PASSIVE, one thread per core)
    load    "alone", or "beside 1" competing process: a busy loop on one core (a single-threaded
            job), started before the chapter and stopped after it

The arms run interleaved, in a rotating order, round after round, so that drifting load on a shared
machine hits every arm alike. Reported: the median seconds per arm, the slowdown beside the
competitor (its median / the median alone) per policy, and the 1-minute load average before
each run. The idle wall time of a chapter is best estimated by its user+sys CPU seconds when the
machine is shared; the ratios here are only meaningful against the load printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("before", "after")
LOADS = ("alone", "beside 1")
SPIN = "while True:\n    pass\n"


def run_chapter(chapter: str, policy: str, quick: bool, out: Path) -> dict:
    """One execution of the chapter in a fresh build_book process; seconds and CPU time."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    cmd = [sys.executable, str(ROOT / "tools" / "build_book.py"), "--only", chapter, "--no-render",
           "--out", str(out)] + (["--quick"] if quick else []) + (["--omp-default"] if policy == "before" else [])
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{chapter} failed ({policy}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    timings = json.loads((out / "results" / "timings.json").read_text())
    (stem, seconds), = ((k, v) for k, v in timings["seconds"].items() if chapter in k)
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"stem": stem, "seconds": seconds, "process_wall": round(wall, 1), "cpu_seconds": round(cpu, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapter", default="01_ctr_world", help="a notebook stem (or part of one)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each round runs all four arms")
    ap.add_argument("--full", action="store_true", help="full mode instead of QUICK")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated subset of 'before,after' (a full-mode chapter takes minutes per run)")
    ap.add_argument("--out", help="write one JSON line per run and a summary line to this file")
    args = ap.parse_args(argv)

    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        ap.error(f"--policies takes a subset of {','.join(POLICIES)}, not {args.policies!r}")
    arms = [(p, load) for p in policies for load in LOADS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        for rep in range(args.repeats):
            order = arms[rep % len(arms):] + arms[:rep % len(arms)]  # rotate: no arm always first
            for policy, load in order:
                competitor = None
                if load != "alone":
                    competitor = subprocess.Popen([sys.executable, "-c", SPIN])
                    time.sleep(1.0)
                try:
                    load_avg = os.getloadavg()[0]
                    r = run_chapter(args.chapter, policy, not args.full, Path(tmp))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                row = {"round": rep, "policy": policy, "load": load, "loadavg_1min": round(load_avg, 2), **r}
                rows.append(row)
                print(json.dumps(row), flush=True)

    med = {(p, load): statistics.median(r["seconds"] for r in rows if (r["policy"], r["load"]) == (p, load))
           for p, load in arms}
    summary = {"summary": True, "chapter": rows[0]["stem"], "mode": "full" if args.full else "QUICK",
               "repeats": args.repeats, "cores": len(os.sched_getaffinity(0)),
               "median_seconds": {f"{p}, {load}": round(s, 1) for (p, load), s in med.items()},
               "slowdown_beside_1": {p: round(med[(p, "beside 1")] / med[(p, "alone")], 2) for p in policies},
               "after_vs_before": ({load: round(med[("after", load)] / med[("before", load)], 2) for load in LOADS}
                                   if len(policies) == 2 else None),
               "loadavg_1min": {"min": min(r["loadavg_1min"] for r in rows),
                                "median": statistics.median(r["loadavg_1min"] for r in rows),
                                "max": max(r["loadavg_1min"] for r in rows)}}
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in [*rows, summary])
    return 0


if __name__ == "__main__":
    sys.exit(main())

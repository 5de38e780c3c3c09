#!/usr/bin/env python
"""Every chapter's claims in one table, checked against the results protocol (``make claims``).

    python tools/claims.py                  # execute every chapter in full mode, then check and print
    python tools/claims.py --results DIR    # only check and print the results JSON already in DIR
    python tools/claims.py --only 04_apg    # execute (full mode) and check one chapter

Checks, for each chapter's results JSON: a non-empty ``claims`` list; every verdict equals the one
its evidence gives by the rule in ``ctrlib.experiment.verdict``; in full mode, every headline
claim has >= 3 seeds and every run behind it was stopped by early stopping (not the epoch cap),
except a claim that states a ``fixed_budget`` (a claim about a training curve's points, e.g. the
AUC after the first epoch boundary): its runs may stop at the epoch cap, and it still needs 3 seeds.
Exits 1 if any check fails. Not part of CI: a full run takes up to ~10 minutes per chapter.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

import build_book
from ctrlib.experiment import NOT_TRAINED, recompute_verdict

MIN_SEEDS = 3


def problems(stem: str, res: dict) -> list[str]:
    """What a chapter's recorded claims get wrong by the protocol (empty when all is well)."""
    claims = res.get("claims")
    if not isinstance(claims, list) or not claims:
        return [f"{stem}: no claims recorded"]
    out = []
    for c in claims:
        name = f"{stem}: {c.get('claim', '?')!r}"
        missing = [k for k in ("claim", "metric", "arms", "direction", "margin", "verdict", "evidence") if k not in c]
        missing += [f"evidence.{k}" for k in ("delta", "ci", "seeds", "n_test") if k not in c.get("evidence", {})]
        if missing:
            out.append(f"{name} lacks {missing}")
            continue
        if recompute_verdict(c) != c["verdict"]:
            out.append(f"{name}: recorded verdict {c['verdict']!r}, the rule gives {recompute_verdict(c)!r}")
        if c.get("headline") and not res.get("quick", True):
            if len(c["evidence"]["seeds"]) < MIN_SEEDS:
                out.append(f"{name}: headline claim with {len(c['evidence']['seeds'])} seed(s), needs {MIN_SEEDS}")
            stopped = [r for runs in c["evidence"].get("stopped_by", {}).values() for r in runs]
            allowed = ("early stopping", NOT_TRAINED) + (("epoch cap",) if c.get("fixed_budget") else ())
            if any(r not in allowed for r in stopped):  # an oracle is not trained
                out.append(f"{name}: headline runs stopped by {sorted(set(stopped))}, not all by early stopping"
                           + ("" if c.get("fixed_budget") else " (a claim about a fixed-budget curve states "
                              "its fixed_budget)"))
    return out


def table(results: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for stem, res in results.items():
        for c in res.get("claims", []):
            e = c["evidence"]
            rows.append({"chapter": stem, "claim": c["claim"][:70], "metric": c["metric"],
                         "delta": round(e["delta"], 4), "ci": f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]",
                         "seeds": len(e["seeds"]), "verdict": c["verdict"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, help="check this results folder instead of executing the chapters")
    ap.add_argument("--only", action="append", metavar="NAME", help="execute only these chapters (repeatable)")
    ap.add_argument("--out", type=Path, default=build_book.ROOT / "_build" / "claims")
    args = ap.parse_args(argv)
    results_dir = args.results
    if results_dir is None:
        cmd = ["--no-render", "--out", str(args.out)] + [a for s in (args.only or []) for a in ("--only", s)]
        if build_book.main(cmd) != 0:
            print("a chapter failed to execute; see the log above", file=sys.stderr)
            return 1
        results_dir = args.out / "results"
    stems = [nb.stem for nb in build_book.chapter_notebooks()]
    if args.only:
        stems = [s for s in stems if any(o in s for o in args.only)]
    results, issues = {}, []
    for stem in stems:
        path = results_dir / f"{stem}.json"
        if not path.exists():
            issues.append(f"{stem}: no results at {path}")
            continue
        results[stem] = json.loads(path.read_text())
        issues += problems(stem, results[stem])
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.max_rows", 500):
        print(table(results).to_string(index=False))
    for line in issues:
        print("PROBLEM", line)
    print(f"{sum(len(r.get('claims', [])) for r in results.values())} claims in {len(results)} chapters; "
          f"{len(issues)} problem(s)")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())

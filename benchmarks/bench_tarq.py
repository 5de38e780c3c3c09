#!/usr/bin/env python3
"""TARQ efficiency: per-request pre-ranking latency vs the number of candidates M, TT / TARQ / TA.

One request (one user with a 30-behaviour history) of the pre-ranking world
(``ctrlib.data.world.preranking``); M candidates drawn from an offline item index of the catalogue.
Per request, each model does all of its work (``ctrlib.profiling.preranking_servers``):

* **TT** (``TwoTower``): the user tower, then M dot products with precomputed item vectors;
* **TARQ**: the user tower and one attention with the L*K codewords as queries (the table
  ``P X [L, K, D]``), then per candidate L lookups, a sum and a dot product;
* **TA** (``TARQ(teacher_only=True)``): the user tower, then M attentions over the history.

Latency does not depend on the weights, so the models are freshly initialised (same widths as the
chapter). For each M the three are timed interleaved (``ctrlib.profiling.request_latency``,
``--repeats`` samples each); ratios at the largest M come with a 95% interval from
``ctrlib.experiment.compare_samples`` (bootstrap of the ratio of medians).

Acceptance (issue 14): at M = 10,000, TARQ's median latency within 2x TT's and well below TA's.

    .venv/bin/python benchmarks/bench_tarq.py --threads 1 --repeats 15 --out benchmarks/results/tarq.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from ctrlib.data import TensorData
from ctrlib.data.world.preranking import ITEM_FIELDS, PreRankingConfig, PreRankingWorld
from ctrlib.experiment import compare_samples
from ctrlib.models import TARQ, TwoTower
from ctrlib.profiling import preranking_servers, request_latency


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, nargs="+", default=[10, 100, 1_000, 10_000], help="values of M")
    p.add_argument("--repeats", type=int, default=15, help="timed samples per model and M (medians compared)")
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--codes", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.repeats < 5:
        print("note: fewer than 5 repeats; medians of >= 5 are the convention here", file=sys.stderr)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pw = PreRankingWorld(PreRankingConfig(seed=args.seed))
    df = pw.sample(300, seed=args.seed + 1)        # 3,000 impressions: the item index and the request
    schema = pw.schema()
    data = TensorData.from_frame(df, schema)
    models = {"TT": TwoTower(schema, 16, (128,), 32, item_features=ITEM_FIELDS),
              "TARQ": TARQ(schema, 16, (128,), 32, item_features=ITEM_FIELDS, levels=args.levels, codes=args.codes),
              "TA": TARQ(schema, 16, (128,), 32, item_features=ITEM_FIELDS, teacher_only=True)}
    request = {k: v[:1] for k, v in data.tensors.items()}
    servers = preranking_servers(request, data.tensors, models)
    lat = request_latency(servers, len(data), args.candidates, args.repeats, seed=args.seed)
    med = lat.groupby(["candidates", "model"]).ms.median().unstack("model")[["TT", "TARQ", "TA"]]
    big = max(args.candidates)
    at = {n: lat[(lat.model == n) & (lat.candidates == big)].ms.to_numpy() for n in ("TT", "TARQ", "TA")}

    def ratio(a, b):
        e = compare_samples(at[a], at[b], "median_ratio")
        return {"ratio": 1 + e["delta"], "ci": [1 + e["ci"][0], 1 + e["ci"][1]]}

    summary = {"M": big, "tarq_vs_tt": ratio("TT", "TARQ"), "tarq_vs_ta": ratio("TA", "TARQ"),
               "ta_vs_tt": ratio("TT", "TA")}
    summary["tarq_within_2x_tt"] = bool(summary["tarq_vs_tt"]["ci"][1] < 2)
    summary["tarq_below_ta"] = bool(summary["tarq_vs_ta"]["ci"][1] < 1)
    out = {"benchmark": "tarq_latency", "threads": torch.get_num_threads(), "repeats": args.repeats,
           "levels": args.levels, "codes": args.codes, "history_len": pw.config.history_len,
           "torch": torch.__version__, "machine": platform.machine(), "summary": summary,
           "median_ms": med.round(4).reset_index().to_dict(orient="records")}
    print(med.round(3).to_string())
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

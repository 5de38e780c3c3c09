#!/usr/bin/env python3
"""Serving latency: eager PyTorch vs onnxruntime vs ``torch.compile``, at B = 1 and B = 512.

Three models as a service runs them (eval mode, no gradients, inputs already encoded as tensors):

* DeepFM, BARS sizes (embedding 10, MLP 400-400-400) on the simulator's 11 fields;
* DIN (embedding 16, MLP 200-80, Dice) with a 50-behaviour history;
* the two-tower model's user tower (embedding 16, MLP 128, 32-d vectors): what a request runs (the
  item vectors are computed offline), exported on its own by ``ctrlib.export_towers``.

Each arm answers ``--calls`` requests of B rows, one at a time; a run is one arm's calls, and the
run's p50 / p95 are over its per-call latencies. Runs interleave (eager, onnxruntime, compile,
then the order rotated) for ``--reps`` rounds after a warm-up of each (``torch.compile``'s
compilation and onnxruntime's session creation are outside the timers), and the script reports the
median over rounds of each p50 / p95 and of each round's ratio to eager. Every arm runs on
``--threads`` intra-op threads (torch and onnxruntime alike). Before timing, every arm's logits are
checked against eager (max abs error reported). The 1-minute load average is logged at the start
and the end: on a shared machine only the ratios mean anything.

    .venv/bin/python benchmarks/bench_serving.py --threads 1 --reps 5 --calls 200 --out _build/bench/serving.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import ctrlib
from ctrlib.data import CTRWorld, TensorData
from ctrlib.models import DIN, DeepFM, TwoTower

ITEM = ["item_id", "category", "brand", "price"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds (medians over them)")
    p.add_argument("--calls", type=int, default=200, help="requests per run at B = 1 (a fifth of it at larger B)")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 512])
    p.add_argument("--models", nargs="*", default=["deepfm", "din", "two_tower"])
    p.add_argument("--arms", nargs="*", default=["eager", "onnxruntime", "compile"])
    p.add_argument("--out", default=None)
    return p.parse_args()


def models_and_data():
    """name -> (the model, the function a request runs, the batch dict of its inputs, every feature)."""
    world = CTRWorld(seed=0, history_len=50)
    schema = world.schema(extras=())
    data = TensorData.from_frame(world.sample(4096, seed=0), schema).tensors
    fields = schema.select(*[f.name for f in schema.categorical])
    ctrlib.seed_everything(0)
    deepfm = DeepFM(fields, 10, (400, 400, 400)).eval()
    din = DIN(schema, 16, (200, 80)).eval()
    tower = TwoTower(schema, 16, (128,), 32, item_features=ITEM).eval()
    every = {f.name: data[f.name] for f in schema.features}
    return {"deepfm": (deepfm, deepfm, {f.name: data[f.name] for f in fields.features}, every),
            "din": (din, din, every, every),
            "two_tower": (tower, tower.user_vector, {n: data[n] for n in tower.user_features}, every)}


def load1() -> float:
    return os.getloadavg()[0]


def markdown(result: dict) -> str:
    """The README table: per model and B, each arm's p50 / p95 (ms) and its p50 ratio to eager."""
    lines = ["| model | B | arm | p50 ms | p95 ms | p50 / eager (median of rounds) |", "|---|---|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['arm']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
                     f"{r['p50_vs_eager']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start_load = load1()
    results, checks = [], {}
    tmp = tempfile.mkdtemp(prefix="bench_serving_")
    for name, (model, module, data, every) in models_and_data().items():
        if name not in args.models:
            continue
        example = {k: v[:64] for k, v in every.items()}
        if name == "two_tower":
            path = ctrlib.export_towers(model, example, tmp, "onnx", atol=1e-4)["user"].path
        else:
            path = ctrlib.export(model, example, os.path.join(tmp, f"{name}.onnx"), "onnx", atol=1e-4).path
        served = ctrlib.load_exported(path, threads=args.threads)
        compiled = torch.compile(module, dynamic=True)
        for B in args.batches:
            batch = {k: v[:B] for k, v in data.items()}
            feed = {k: v.numpy() for k, v in batch.items()}
            with torch.no_grad():
                eager_out = module(batch).numpy()
                arms = {
                    "eager": lambda b=batch, m=module: m(b),
                    "onnxruntime": lambda f=feed, s=served.session: s.run(None, f),
                    "compile": lambda b=batch, c=compiled: c(b),
                }
                arms = {k: v for k, v in arms.items() if k in args.arms}
                for arm, call in arms.items():  # warm-up (compilation), and a parity check of each arm
                    got = call()
                    got = got[0] if isinstance(got, list) else got.numpy()
                    checks[f"{name}/B={B}/{arm}"] = float(np.abs(got - eager_out).max())
                rounds = {arm: [] for arm in arms}
                order = list(arms)
                for rep in range(args.reps):
                    for arm in order[rep % len(order):] + order[:rep % len(order)]:
                        call, times = arms[arm], []
                        for _ in range(args.calls if B == 1 else max(20, args.calls // 5)):
                            t0 = time.perf_counter()
                            call()
                            times.append(time.perf_counter() - t0)
                        rounds[arm].append((np.percentile(times, 50), np.percentile(times, 95)))
            for arm, runs in rounds.items():
                p50s, p95s = [r[0] for r in runs], [r[1] for r in runs]
                base = rounds["eager"]
                results.append({
                    "model": name, "batch": B, "arm": arm,
                    "p50_ms": statistics.median(p50s) * 1e3, "p95_ms": statistics.median(p95s) * 1e3,
                    "p50_vs_eager": statistics.median(a[0] / e[0] for a, e in zip(runs, base)),
                    "p95_vs_eager": statistics.median(a[1] / e[1] for a, e in zip(runs, base)),
                    "p50_runs_ms": [x * 1e3 for x in p50s]})
                print(json.dumps(results[-1]), flush=True)
    result = {"bench": "serving", "threads": args.threads, "reps": args.reps, "calls": args.calls,
              "load_1min_start": start_load, "load_1min_end": load1(), "torch": torch.__version__,
              "max_abs_error_vs_eager": checks, "results": results}
    import onnxruntime
    result["onnxruntime"] = onnxruntime.__version__
    line = json.dumps(result)
    print(line)
    print(markdown(result), file=sys.stderr)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

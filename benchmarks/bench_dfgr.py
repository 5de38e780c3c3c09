#!/usr/bin/env python
"""DFGR vs MetaGR (interleaved HSTU): training time per epoch vs sequence length, inference
latency vs number of candidates (both models encode the history once and let the candidates
attend to it: no dense (history + m)^2 attention), and the analytic attention FLOPs. Same blocks, width, data,
CPU and thread count for both; the two models' runs alternate (A, B, A, B) so drifting load on a
shared machine hits both alike; medians of several repeats; ratios from one run.

    .venv/bin/python benchmarks/bench_dfgr.py                # full: N up to 512
    .venv/bin/python benchmarks/bench_dfgr.py --quick        # a smoke run (seconds)
    .venv/bin/python benchmarks/bench_dfgr.py --inference-only   # re-measure latency, keep the training rows

Writes benchmarks/results/dfgr.json (--out) and prints markdown tables.
Acceptance (issue 6): DFGR's training time per epoch <= 0.6 x MetaGR's at the longest N.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ctrlib.data import CTRWorld
from ctrlib.data.generative import sequence_schema
from ctrlib.models.dfgr import GenerativeRanker, attention_flops

OUT = Path(__file__).resolve().parent / "results" / "dfgr.json"


def make_model(mode, world, n, dim, blocks, seed=0):
    torch.manual_seed(seed)
    schema = sequence_schema(world.config.n_items + 2, world.config.n_categories + 2, 4, n)
    return GenerativeRanker(schema, dim, (64,), num_blocks=blocks, mode=mode)


def one_epoch(model, opt, seqs, batch_size):
    """Wall time of a full training epoch (forward, backward, Adam step over every user)."""
    start = time.perf_counter()
    for s in range(0, len(seqs["item_id"]), batch_size):
        batch = {k: v[s:s + batch_size] for k, v in seqs.items()}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def alternate(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run alternately (A, B, A, B, ...) after one warm-up each,
    so that drifting load on a shared machine hits both alike."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(f())
    return {k: statistics.median(v) for k, v in times.items()}


def timed_scoring(model, hist, cand):
    def run():
        start = time.perf_counter()
        with torch.no_grad():
            model.score_candidates(hist, cand)
        return time.perf_counter() - start
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help=f"results JSON (default {OUT})")
    ap.add_argument("--inference-only", action="store_true",
                    help="time only candidate scoring; the training rows are kept from the existing --out JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [32, 64] if args.quick else [64, 128, 256, 512]
    users, batch, repeats = (16, 8, 1) if args.quick else (64, 8, 3)
    history, cands = (64, [1, 8]) if args.quick else (256, [1, 16, 64, 256])
    infer_users = 4 if args.quick else 16  # one request batch: this many users' histories
    world = CTRWorld(n_users=2000, n_items=2000, action_types=True)
    full = world.action_sequences(users, max(lengths + [history + max(cands)]), seed=0)

    train = json.loads(args.out.read_text())["train"] if args.inference_only else []
    for n in ([] if args.inference_only else lengths):
        seqs = {k: torch.as_tensor(full[k][:, :n]) for k in ("item_id", "category", "action", "timestamp", "label")}
        seqs["label"] = seqs["label"].float()
        row = {"N": n, "load_avg_1min": os.getloadavg()[0]}
        fns = {}
        for mode in ("metagr", "dfgr"):
            model = make_model(mode, world, n, args.dim, args.blocks)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            fns[mode] = (lambda model=model, opt=opt, seqs=seqs: one_epoch(model, opt, seqs, batch))
            row[f"{mode}_attn_mflops"] = args.blocks * users * attention_flops(n, args.dim, mode) / 1e6
        for mode, sec in alternate(fns, repeats).items():
            row[f"{mode}_s"] = sec
        row["time_ratio"] = row["dfgr_s"] / row["metagr_s"]
        row["flops_ratio"] = row["dfgr_attn_mflops"] / row["metagr_attn_mflops"]
        train.append(row)
        print(f"N={n}: MetaGR {row['metagr_s']:.3f}s  DFGR {row['dfgr_s']:.3f}s  ratio {row['time_ratio']:.2f}",
              flush=True)

    infer = []
    hist = {k: torch.as_tensor(full[k][:infer_users, :history]) for k in ("item_id", "category", "action", "timestamp")}
    for m in cands:
        cand = {k: torch.as_tensor(full[k][:infer_users, history:history + m])
                for k in ("item_id", "category", "timestamp")}
        row = {"candidates": m, "load_avg_1min": os.getloadavg()[0]}
        fns = {}
        for mode in ("metagr", "dfgr"):
            fns[mode] = timed_scoring(make_model(mode, world, history + 1, args.dim, args.blocks).eval(), hist, cand)
            row[f"{mode}_attn_mflops"] = args.blocks * infer_users * attention_flops(history, args.dim, mode, m) / 1e6
        for mode, sec in alternate(fns, 3 if args.quick else 7).items():
            row[f"{mode}_ms"] = 1000 * sec
        row["latency_ratio"] = row["dfgr_ms"] / row["metagr_ms"]
        infer.append(row)
        print(f"m={m}: MetaGR {row['metagr_ms']:.1f}ms  DFGR {row['dfgr_ms']:.1f}ms  ratio {row['latency_ratio']:.2f}",
              flush=True)

    longest = train[-1]
    result = {
        "setup": {"threads": args.threads, "dim": args.dim, "blocks": args.blocks, "heads": 1, "users_per_epoch": users,
                  "batch_size": batch, "repeats": repeats, "inference_history": history, "inference_users": infer_users,
                  "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                  "quick": args.quick},
        "train": train, "inference": infer,
        "acceptance": {"longest_N": longest["N"], "train_time_ratio": longest["time_ratio"],
                       "passes_0.6": bool(longest["time_ratio"] <= 0.6)},
    }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print("\n| N | MetaGR s/epoch | DFGR s/epoch | time ratio | attention FLOPs ratio |\n|---|---|---|---|---|")
    for r in train:
        print(f"| {r['N']} | {r['metagr_s']:.3f} | {r['dfgr_s']:.3f} | {r['time_ratio']:.2f} "
              f"| {r['flops_ratio']:.2f} |")
    print(f"\n| candidates (history {history}) | MetaGR ms | DFGR ms | latency ratio | attention FLOPs ratio |"
          "\n|---|---|---|---|---|")
    for r in infer:
        fr = r["dfgr_attn_mflops"] / r["metagr_attn_mflops"]
        print(f"| {r['candidates']} | {r['metagr_ms']:.1f} | {r['dfgr_ms']:.1f} | {r['latency_ratio']:.2f} "
              f"| {fr:.2f} |")
    print(f"\nacceptance: DFGR/MetaGR training time at N={longest['N']}: {longest['time_ratio']:.2f} "
          f"({'<=' if longest['time_ratio'] <= 0.6 else '>'} 0.6)")
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Markdown tables from the results ``benchmarks/run.sh`` wrote (``python summarize.py OUT_DIR``)."""
from __future__ import annotations

import json
import os
import statistics
import sys
from collections import defaultdict


def rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def name(r):
    return r["lib"] + ("-bf16" if r.get("precision") == "bf16" else "")


def steady(r):
    """Samples/s of the epochs after the first (all epochs when only one ran)."""
    secs = r["epoch_seconds"][1:] or r["epoch_seconds"]
    return statistics.median(r["n_train"] / s for s in secs)


def main(out):
    for r in rows(f"{out}/trainer.json"):
        print("### Trainer vs model step (DeepFM, BARS config)\n")
        print("| rows | fit samples/s | step samples/s | ratio of medians | median paired ratio | load (1 min) |")
        print("|---|---|---|---|---|---|")
        print(f"| {r['rows']:,} | {r['fit_samples_per_s']:,.0f} | {r['step_samples_per_s']:,.0f} | {r['ratio']:.3f} "
              f"| {statistics.median(r['paired_ratios']):.3f} | {r['loadavg_1min']:.1f} |\n")
    for r in rows(f"{out}/id_bounds.json"):
        print("### Id bounds check in FeatureEmbedding: on vs off (DeepFM training steps, interleaved)\n")
        print("| steps | step ms (on) | step ms (off) | median paired cost | paired cost quartiles "
              "| check alone, us/batch | share of a step | load |")
        print("|---|---|---|---|---|---|---|---|")
        q = r["steps_paired_cost_quartiles"]
        print(f"| {r['steps']} | {r['step_ms_on']} | {r['step_ms_off']} | {r['steps_median_paired_cost']:+.2%} "
              f"| {q[0]:+.1%} / {q[2]:+.1%} | {r['check_us_per_batch']} | {r['check_share_of_step']:.3%} "
              f"| {r['loadavg_1min']:.1f} |\n")
    flops = rows(f"{out}/flops.jsonl") + rows(f"{out}/flops-variants.jsonl")  # run.sh's, then the variants
    if flops:
        print("### Model FLOP rate vs GEMM rate on the model's shapes\n")
        print("| precision | dropout | compiled | GFLOP / step | model GFLOP/s | GEMM GFLOP/s | ratio "
              "| median paired ratio | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in flops:
            print(f"| {r['precision']} | {r.get('dropout', 0.2)} | {'yes' if r.get('compiled') else 'no'} "
                  f"| {r['gflop_per_step']} | {r['model_gflops']} | {r['gemm_gflops']} | {r['ratio']:.3f} "
                  f"| {statistics.median(r['paired_ratios']):.3f} | {r['loadavg_1min']:.1f} |")
        print()
    throughput_table(rows(f"{out}/throughput.jsonl"),
                     "Training throughput, same data, interleaved runs (steady state = epoch 2)")
    throughput_table(rows(f"{out}/din.jsonl"), "DIN (history 50): training throughput, interleaved runs (epoch 2)")
    quality_table(rows(f"{out}/quality.jsonl"), "Quality: early stopping on validation AUC (patience 2)")
    quality_table(rows(f"{out}/din-quality.jsonl"), "DIN quality: early stopping on validation AUC (patience 2)")


def throughput_table(tp, title):
    if not tp:
        return
    by = defaultdict(list)
    for r in tp:
        by[name(r)].append(r)
    rate = {k: statistics.median(steady(r) for r in v) for k, v in by.items()}
    first = {k: statistics.median(r["n_train"] / r["epoch_seconds"][0] for r in v) for k, v in by.items()}
    peers = [k for k in rate if not k.startswith("ctrlib")]
    print(f"### {title}\n")
    print("| library | runs | samples/s (epoch 2) | samples/s (epoch 1) | "
          + " | ".join(f"ratio to {p}" for p in peers) + " |")
    print("|---|---|---|---|" + "---|" * len(peers))
    for k in sorted(rate, key=lambda k: (not k.startswith("ctrlib"), k)):
        ratios = " | ".join(f"{rate[k] / rate[p]:.2f}" for p in peers)
        print(f"| {k} | {len(by[k])} | {rate[k]:,.0f} | {first[k]:,.0f} | {ratios} |")
    if peers:
        print(f"\nfaster peer: {max(peers, key=rate.get)}")
    print()


def quality_table(q, title):
    if not q:
        return
    print(f"### {title}\n")
    print("| library | seed | test AUC | test logloss | epochs run | best epoch | samples/s (epochs >= 2) |")
    print("|---|---|---|---|---|---|---|")
    for r in q:
        print(f"| {name(r)} | {r['seed']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | {r['epochs_run']} "
              f"| {r['best_epoch']} | {steady(r):,.0f} |")
    by = defaultdict(dict)
    for r in q:
        by[name(r)][r["seed"]] = r["test_auc"]
    if any(len(v) > 1 for v in by.values()):
        print("\n| library | seeds | mean test AUC | sd |")
        print("|---|---|---|---|")
        for k, v in by.items():
            sd = statistics.stdev(v.values()) if len(v) > 1 else float("nan")
            print(f"| {k} | {len(v)} | {statistics.mean(v.values()):.4f} | {sd:.4f} |")
    if "ctrlib" in by and "ctrlib-bf16" in by:
        seeds = sorted(set(by["ctrlib"]) & set(by["ctrlib-bf16"]))
        diffs = [by["ctrlib-bf16"][s] - by["ctrlib"][s] for s in seeds]
        if diffs:
            print(f"\nbf16 - fp32 test AUC per seed {seeds}: {[round(d, 4) for d in diffs]}, "
                  f"mean {statistics.mean(diffs):+.4f}")
    print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "_build/bench")

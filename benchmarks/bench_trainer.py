#!/usr/bin/env python3
"""DeepFM training throughput: end to end through ``ctrlib.fit`` versus a bare model step loop.

Both sides train the same DeepFM (BARS sizes: embedding 10, MLP 400-400-400, dropout 0.2,
batch 4096, Adam 1e-3, embedding L2 0.05) on the same pre-built tensors of a simulator sample:

* ``fit``:  the wall time of ``ctrlib.fit(model, train, None, epochs=1, ...)`` (no validation
  split, so no evaluation pass), i.e. everything the trainer does: optimizer set-up, the
  per-epoch shuffle, batching, loss, L2, backward, step, loss bookkeeping, the progress bar;
* ``step``: the model alone: ``forward -> BCE (+ the same L2) -> backward -> Adam step`` over
  batches sliced beforehand (outside the timer) from one shuffled copy of the same tensors.

Model construction is outside both timers. Runs alternate (fit, step, fit, step, ...) after
one warm-up of each, and the script reports the medians and their ratio (target >= 0.9).
Prints one JSON line; ``--out`` also writes it to a file.

    .venv/bin/python benchmarks/bench_trainer.py --rows 500000 --runs 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ctrlib import TrainConfig, fit, seed_everything
from ctrlib.data import CTRWorld, TensorData
from ctrlib.models import DeepFM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000, help="training rows from CTRWorld(seed=0)")
    p.add_argument("--runs", type=int, default=5, help="timed epochs per side (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--emb-l2", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    return p.parse_args()


def build_model(schema, args) -> DeepFM:
    seed_everything(0)
    return DeepFM(schema, 10, (400, 400, 400), dropout=args.dropout)


def run_fit(data: TensorData, schema, args) -> tuple[float, float]:
    """Seconds of one whole ``fit`` call (1 epoch) and the training seconds ``fit`` reports."""
    model = build_model(schema, args)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-3, embedding_l2=args.emb_l2, progress=False)
    start = time.perf_counter()
    result = fit(model, data, None, cfg)
    return time.perf_counter() - start, result.train_seconds


def run_steps(batches: list[dict[str, torch.Tensor]], schema, args) -> float:
    """Seconds of the bare loop over pre-sliced batches: forward, loss, backward, Adam step."""
    model = build_model(schema, args)
    model.train()
    tables = [model.embedding.weight, model.linear.weights.weight]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for batch in batches:
        loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
        loss = loss + args.emb_l2 / 2 * sum(t.pow(2).sum() for t in tables)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def emit(result: dict, path: str | None) -> None:
    """Print the result as one JSON line and, if ``path`` is given, write that line to it."""
    line = json.dumps(result)
    print(line)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_1min": os.getloadavg()[0]}


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # fit sets it (process-wide); the bare loop gets the same
    world = CTRWorld(seed=0)
    df = world.sample(args.rows, seed=0)
    schema = world.schema()
    data = TensorData.from_frame(df, schema)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    shuffled = data.subset(perm)
    batches = list(shuffled.batches(args.batch))
    n = len(data)

    # warm-up: oneDNN primitives, allocator pools, lazy imports (tqdm) on both paths
    warm = TensorData({k: v[: 20 * args.batch] for k, v in data.tensors.items()})
    run_fit(warm, schema, args)
    run_steps(batches[:20], schema, args)

    fit_s, fit_train_s, step_s = [], [], []
    for r in range(args.runs):
        wall, inner = run_fit(data, schema, args)
        fit_s.append(wall)
        fit_train_s.append(inner)
        step_s.append(run_steps(batches, schema, args))
        print(f"run {r + 1}: fit {n / wall:,.0f}/s  step {n / step_s[-1]:,.0f}/s", file=sys.stderr)

    fit_rate = statistics.median(n / s for s in fit_s)
    step_rate = statistics.median(n / s for s in step_s)
    out = {
        "benchmark": "trainer_vs_step", "model": "DeepFM", "rows": n, "batch": args.batch,
        "emb": 10, "mlp": [400, 400, 400], "dropout": args.dropout, "emb_l2": args.emb_l2,
        "fit_samples_per_s": round(fit_rate, 1), "step_samples_per_s": round(step_rate, 1),
        "ratio": round(fit_rate / step_rate, 4),
        "paired_ratios": [round(b / a, 4) for a, b in zip(fit_s, step_s)],
        "fit_seconds": [round(s, 3) for s in fit_s], "fit_train_seconds": [round(s, 3) for s in fit_train_s],
        "step_seconds": [round(s, 3) for s in step_s], **machine(),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

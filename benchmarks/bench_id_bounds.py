#!/usr/bin/env python3
"""The cost of FeatureEmbedding's per-feature id bounds check: DeepFM training throughput with it on vs off.

``FeatureEmbedding.check_ids`` refuses any id outside its own feature's vocabulary (one check over
the stacked ``[B, F]`` ids per forward: a min, a compare against the per-feature sizes, one sync).
Everything trains the same DeepFM (BARS sizes: embedding 10, MLP 400-400-400, dropout 0.2, batch
4096, Adam 1e-3, embedding L2 0.05) on a CTRWorld(seed=0) sample, with the check as shipped ("on")
and with ``check_ids`` replaced by a no-op ("off"). Three measurements:

* ``steps``: training steps (forward, BCE + L2, backward, Adam step) alternating on/off step by step
  in pairs (on-off, then off-on, ...), ``--steps`` steps in all; the median of the per-pair time
  ratios. Interleaving at the step level cancels the machine's drift, which at the seconds scale
  is far larger than the effect on a shared machine.
* ``fit``: ``--fit-runs`` whole ``ctrlib.fit`` epochs per side, interleaved (order alternating);
  the median of the paired ratios. Noisy on a loaded machine; 0 skips it.
* ``alone``: the check by itself on one batch's ids (median of many calls) over the median step.

Prints one JSON line; ``--out`` also writes it to a file.

    .venv/bin/python benchmarks/bench_id_bounds.py --rows 100000 --steps 300 --fit-runs 0 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench_trainer import emit, machine
from ctrlib import TrainConfig, fit, seed_everything
from ctrlib.data import CTRWorld, TensorData
from ctrlib.layers import FeatureEmbedding
from ctrlib.models import DeepFM

CHECK = FeatureEmbedding.check_ids


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="training rows from CTRWorld(seed=0)")
    p.add_argument("--steps", type=int, default=300, help="interleaved training steps (half on, half off)")
    p.add_argument("--fit-runs", type=int, default=0, help="whole fit epochs per side (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    return p.parse_args()


def switch(check: bool) -> None:
    FeatureEmbedding.check_ids = CHECK if check else (lambda self, names, ids, sizes: None)


def build_model(schema) -> DeepFM:
    seed_everything(0)
    return DeepFM(schema, 10, (400, 400, 400), dropout=0.2)


def interleaved_steps(data: TensorData, schema, args) -> tuple[list[float], list[float]]:
    """Seconds of training steps with the check on and off, alternating in pairs (on-off, off-on, ...)."""
    model = build_model(schema)
    model.train()
    tables = [model.embedding.weight, model.linear.weights.weight]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [b for b in data.batches(args.batch, shuffle=True, seed=1) if len(b["label"]) == args.batch]

    def step(batch) -> float:
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
        loss = loss + 0.05 / 2 * sum(t.pow(2).sum() for t in tables)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for batch in batches[:5]:  # warm-up
        step(batch)
    on, off = [], []
    for k in range(args.steps // 2):
        for check in ((True, False) if k % 2 == 0 else (False, True)):
            switch(check)
            (on if check else off).append(step(batches[(2 * k + check) % len(batches)]))
    switch(True)
    return on, off


def fit_seconds(data: TensorData, schema, args, check: bool) -> float:
    """``fit``'s training seconds for one epoch, with the id check as shipped or switched off."""
    switch(check)
    try:
        cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-3, embedding_l2=0.05, progress=False)
        return fit(build_model(schema), data, None, cfg).train_seconds
    finally:
        switch(True)


def check_alone(data: TensorData, schema, args, calls: int = 2000) -> float:
    """Median seconds of one ``check_ids`` call on a training batch's stacked ids ``[B, F]``."""
    emb = build_model(schema).embedding
    batch = next(data.batches(args.batch))
    ids = torch.stack([batch[n] for n in emb.categorical], dim=1)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        emb.check_ids(emb.categorical, ids, emb.cat_sizes)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as fit does
    world = CTRWorld(seed=0)
    schema = world.schema()
    data = TensorData.from_frame(world.sample(args.rows, seed=0), schema)
    n = len(data)
    out = {"benchmark": "id_bounds", "model": "DeepFM", "rows": n, "batch": args.batch,
           "fields": len(schema.categorical)}

    on, off = interleaved_steps(data, schema, args)
    pairs = [a / b for a, b in zip(on, off)]
    out.update({"steps": len(on) + len(off), "step_ms_on": round(statistics.median(on) * 1e3, 2),
                "step_ms_off": round(statistics.median(off) * 1e3, 2),
                "steps_cost_of_medians": round(statistics.median(on) / statistics.median(off) - 1, 4),
                "steps_median_paired_cost": round(statistics.median(pairs) - 1, 4),
                "steps_paired_cost_quartiles": [round(q - 1, 4) for q in statistics.quantiles(pairs, n=4)]})
    print(f"steps: on {out['step_ms_on']} ms, off {out['step_ms_off']} ms, median paired cost "
          f"{out['steps_median_paired_cost']:+.2%}", file=sys.stderr)

    if args.fit_runs:
        fit_seconds(TensorData({k: v[: 10 * args.batch] for k, v in data.tensors.items()}), schema, args, True)
        fon, foff = [], []
        for r in range(args.fit_runs):
            for check in ((True, False) if r % 2 == 0 else (False, True)):
                (fon if check else foff).append(fit_seconds(data, schema, args, check))
            print(f"fit run {r + 1}: on {n / fon[-1]:,.0f}/s  off {n / foff[-1]:,.0f}/s", file=sys.stderr)
        out.update({"fit_on_samples_per_s": round(statistics.median(n / s for s in fon), 1),
                    "fit_off_samples_per_s": round(statistics.median(n / s for s in foff), 1),
                    "fit_median_paired_cost": round(statistics.median(a / b for a, b in zip(fon, foff)) - 1, 4),
                    "fit_on_seconds": [round(s, 3) for s in fon], "fit_off_seconds": [round(s, 3) for s in foff]})

    check_s = check_alone(data, schema, args)
    out.update({"check_us_per_batch": round(check_s * 1e6, 1),
                "check_share_of_step": round(check_s / statistics.median(on), 5), **machine()})
    emit(out, args.out)


if __name__ == "__main__":
    main()

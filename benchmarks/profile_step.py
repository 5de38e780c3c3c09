#!/usr/bin/env python3
"""Where a DeepFM training step (BARS config, through ``ctrlib.fit``'s loss) spends its time:
torch.profiler's table of operators by self CPU time, plus the share of matrix multiplies.

    .venv/bin/python benchmarks/profile_step.py --threads 2 --steps 5 [--precision bf16] [--dropout 0]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import profile

from ctrlib import seed_everything
from ctrlib.data import CTRWorld, TensorData
from ctrlib.models import DeepFM

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm", "mkldnn::_linear_pointwise")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--rows", type=int, default=15, help="operators in the table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    world = CTRWorld(seed=0)
    schema = world.schema()
    data = TensorData.from_frame(world.sample(4096 * (args.steps + 1), seed=0), schema)
    batches = list(data.batches(4096, shuffle=True, seed=1))
    seed_everything(0)
    model = DeepFM(schema, 10, (400, 400, 400), dropout=args.dropout)
    tables = [model.embedding.weight, model.linear.weights.weight]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        loss = loss + 0.05 / 2 * sum(t.pow(2).sum() for t in tables)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[-1])  # warm-up
    with profile() as prof:
        for batch in batches[:-1]:
            step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"{args.precision}, dropout {args.dropout}: {total / args.steps / 1e3:.1f} ms per step (profiled), "
          f"matrix multiplies {gemm / total:.0%} of self CPU time")


if __name__ == "__main__":
    main()

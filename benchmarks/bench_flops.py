#!/usr/bin/env python3
"""Model FLOP rate of a DeepFM training step versus this machine's GEMM rate on the model's shapes.

1. One training step (BARS DeepFM: embedding 10, MLP 400-400-400, dropout 0.2, batch 4096, Adam,
   embedding L2 0.05) runs under a dispatch mode that records every matrix multiply (``mm``,
   ``addmm``, ``bmm``) with its operand shapes and strides, forward and backward: the step's
   FLOPs are 2*m*k*n summed over them (everything else -- embedding gathers, dropout, ReLU, FM,
   Adam -- is not counted as model FLOPs, so it shows up as lost rate).
2. The ceiling: the same list of GEMMs (same shapes, same transposed layouts) run back to back on
   random data -- the best this machine does on exactly these matrices with this torch.
3. Blocks of ``--steps`` model steps and blocks of the GEMM list alternate ``--blocks`` times;
   the medians give the model FLOP rate, the GEMM rate and their ratio (target >= 0.8).

``--precision bf16`` runs the step under CPU bfloat16 autocast and times the GEMM list in bf16.
``--dropout 0`` measures the step without dropout masks (how much of the gap they are);
``--compile`` wraps the model in ``torch.compile`` (Inductor: it may fuse the element-wise work
into fewer passes; compile time is reported, not timed in the rate).

    .venv/bin/python benchmarks/bench_flops.py --threads 2 --blocks 5 --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ctrlib import seed_everything
from ctrlib.data import CTRWorld, TensorData
from ctrlib.models import DeepFM

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class RecordMatmuls(TorchDispatchMode):
    """Records (op, [(shape, stride, dtype) of each matrix operand]) of every matmul dispatched."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            mats = [a for a in args if isinstance(a, torch.Tensor)]
            if func is torch.ops.aten.addmm.default:
                mats = mats[1:]  # the bias
            self.calls.append((func, [(tuple(m.shape), m.stride(), m.dtype) for m in mats]))
        return func(*args, **(kwargs or {}))


def flops_of(calls) -> float:
    total = 0.0
    for func, ((a_shape, _, _), (b_shape, _, _)) in calls:
        if func is torch.ops.aten.bmm.default:
            total += 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
        else:
            total += 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return total


def operand(shape, stride, dtype):
    """A random tensor with the given shape and the same (possibly transposed) layout."""
    if len(shape) == 2 and stride[0] == 1 and shape[0] > 1:  # a transposed view
        return torch.randn(shape[1], shape[0]).to(dtype).t()
    return torch.randn(shape).to(dtype)


def make_step(model, tables, optimizer, emb_l2, precision):
    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.binary_cross_entropy_with_logits(model(batch).float(), batch["label"])
        loss = loss + emb_l2 / 2 * sum(t.pow(2).sum() for t in tables)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10, help="model steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="alternating (model, GEMM) blocks")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (forward and backward)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    world = CTRWorld(seed=0)
    schema = world.schema()
    data = TensorData.from_frame(world.sample(args.batch * args.steps, seed=0), schema)
    batches = list(data.batches(args.batch, shuffle=True, seed=1))
    seed_everything(0)
    model = DeepFM(schema, 10, (400, 400, 400), dropout=args.dropout)
    tables = [model.embedding.weight, model.linear.weights.weight]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with RecordMatmuls() as rec:  # eager, before any compilation: the model's own matmuls
        make_step(model, tables, optimizer, 0.05, args.precision)(batches[0])
    step = make_step(torch.compile(model) if args.compile else model, tables, optimizer, 0.05, args.precision)
    t = time.perf_counter()
    step(batches[0])  # warm-up (oneDNN primitives, Adam state; the compilation with --compile)
    compile_s = time.perf_counter() - t if args.compile else None
    flops = flops_of(rec.calls)
    gemms = [(func, [operand(*m) for m in mats]) for func, mats in rec.calls]

    def run_gemms():
        for func, (a, b) in gemms:
            torch.mm(a, b) if func is not torch.ops.aten.bmm.default else torch.bmm(a, b)

    run_gemms()  # warm-up
    model_s, gemm_s = [], []
    for _ in range(args.blocks):
        t = time.perf_counter()
        for batch in batches:
            step(batch)
        model_s.append((time.perf_counter() - t) / len(batches))
        t = time.perf_counter()
        for _ in range(len(batches)):
            run_gemms()
        gemm_s.append((time.perf_counter() - t) / len(batches))
        print(f"block: model {flops / model_s[-1] / 1e9:.1f} GFLOP/s, GEMMs {flops / gemm_s[-1] / 1e9:.1f} GFLOP/s",
              file=sys.stderr)

    model_rate = statistics.median(flops / s for s in model_s)
    gemm_rate = statistics.median(flops / s for s in gemm_s)
    shapes = sorted({f"{func.__name__.split('.')[0]} {mats[0][0]}x{mats[1][0]} {str(mats[0][2]).split('.')[-1]}"
                     for func, mats in rec.calls})
    out = {
        "benchmark": "flop_rate", "model": "DeepFM", "precision": args.precision, "batch": args.batch,
        "dropout": args.dropout, "compiled": args.compile, "compile_seconds": compile_s,
        "threads": torch.get_num_threads(), "matmuls_per_step": len(rec.calls),
        "gflop_per_step": round(flops / 1e9, 3), "model_gflops": round(model_rate / 1e9, 2),
        "gemm_gflops": round(gemm_rate / 1e9, 2), "ratio": round(model_rate / gemm_rate, 4),
        "paired_ratios": [round(g / m, 4) for m, g in zip(model_s, gemm_s)],
        "step_ms": [round(s * 1e3, 2) for s in model_s], "gemm_ms": [round(s * 1e3, 2) for s in gemm_s],
        "shapes": shapes, "loadavg_1min": os.getloadavg()[0],
    }
    line = json.dumps(out)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

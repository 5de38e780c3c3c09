#!/usr/bin/env python3
"""The pieces of an embedding-table step, timed alone: lookup + backward, summing duplicate rows, the
optimiser step, for a table of V rows x 10 and one batch of 4096 x 10 uniform ids.

* ``index_select``: ``E.index_select(0, ids)`` forward + backward (dense ``[V, D]`` gradient, an index_add);
* ``embedding dense``: ``F.embedding(ids, E)`` forward + backward (dense gradient);
* ``embedding sparse``: ``F.embedding(ids, E, sparse=True)`` forward + backward (uncoalesced COO gradient);
* ``coalesce`` / ``sum_duplicate_rows``: that sparse gradient with each row once (torch's / ctrlib's);
* ``Adam dense step``: ``torch.optim.Adam`` on the dense gradient; ``LazyAdam row step``: ctrlib's on the rows.

Medians of interleaved repetitions (every piece once per round), in milliseconds. One JSON line.

    .venv/bin/python benchmarks/bench_row_grads.py --rounds 15
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ctrlib.optim import LazyAdam, sum_duplicate_rows


def measure(v: int, n_ids: int, rounds: int) -> dict[str, float]:
    """Median ms of each piece of a table step for a table of ``v`` rows."""
    table = torch.nn.Parameter(torch.randn(v, 10) * 1e-4)
    ids = torch.randint(0, v, (n_ids,), generator=torch.Generator().manual_seed(0))
    adam, lazy = torch.optim.Adam([table], lr=1e-3), LazyAdam([table], lr=1e-3)
    sparse_grad = torch.sparse_coo_tensor(ids.unsqueeze(0), torch.randn(n_ids, 10), (v, 10),
                                          check_invariants=False)
    dense_grad = sparse_grad.to_dense()

    def backward(lookup):
        table.grad = None
        lookup().sum().backward()

    def adam_step():
        table.grad = dense_grad
        adam.step()

    def lazy_step():
        table.grad = sum_duplicate_rows(sparse_grad)
        lazy.step()

    pieces = {
        "index_select": lambda: backward(lambda: table.index_select(0, ids)),
        "embedding dense": lambda: backward(lambda: F.embedding(ids, table)),
        "embedding sparse": lambda: backward(lambda: F.embedding(ids, table, sparse=True)),
        "coalesce": sparse_grad.coalesce,
        "sum_duplicate_rows": lambda: sum_duplicate_rows(sparse_grad),
        "Adam dense step": adam_step,
        "LazyAdam row step (incl. sum_duplicate_rows)": lazy_step,
    }
    times = {k: [] for k in pieces}
    for _ in range(rounds + 1):  # the first round warms up
        for name, piece in pieces.items():
            start = time.perf_counter()
            piece()
            times[name].append(time.perf_counter() - start)
    return {k: round(statistics.median(t[1:]) * 1e3, 3) for k, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="10000,1000000,10000000")
    p.add_argument("--ids", type=int, default=4096 * 10)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"ids": args.ids, "dim": 10, "threads": args.threads, "loadavg_1min": os.getloadavg()[0], "ms": {}}
    for v in (int(r) for r in args.rows.split(",")):
        out["ms"][v] = measure(v, args.ids, args.rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

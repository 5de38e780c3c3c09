#!/usr/bin/env python3
"""DeepFM training throughput and peak memory versus the size of one embedding table.

Ten categorical fields: field ``f0`` has ``V`` rows (10^4 ... 10^7), the nine others 1,000 rows each;
ids uniform at random, labels Bernoulli(0.2). The BARS DeepFM config (embedding 10, MLP
400-400-400, dropout 0.2, batch 4096, Adam 1e-3, embedding L2 0.05 as ``lambda/2 ||E||^2`` on the
mean loss), 2 torch threads. Each run is a fresh process: ``--epochs`` epochs of 81,920 rows (20
steps each), the first a warm-up; the samples/s of the median later epoch and the process's peak
resident memory are reported. One 20-step epoch on this shared 2-core VM varies by +-10% from run to
run, so the 10^4-row comparison of the two ctrlib paths needs several measured epochs per run and
several interleaved runs (``--epochs 5 --reps 7``).

Arms (each through its library's own training loop):

* ``ctrlib-sparse``: ``ctrlib.fit`` with its defaults, lazy row-wise Adam and the L2 on the rows the
  batch touches (``embedding_update="sparse", embedding_l2_rows="batch"``), gradient clip 10;
* ``ctrlib-dense``: ``ctrlib.fit`` with ``embedding_update="dense", embedding_l2_rows="all"``: Adam
  on every row and the full-table L2, the code path ``fit`` had before row-wise updates;
* ``deepctr-torch``: DeepCTR-Torch 0.3.0's ``DeepFM`` and ``fit`` (L2 ``0.05/2*4096`` on its summed
  loss = the same gradient; no clipping, as it has none);
* ``fuxictr``: FuxiCTR 2.3.10's ``BaseModel.train_epoch`` over its ``NpzDataLoader`` (its
  full-table regulariser and gradient clip 10).

The driver runs every (rows, arm) pair once per repetition, arms in reversed order every other
repetition, and writes one JSON line per run (``--out``) plus the medians. The peers run in their
own venv (``benchmarks/peers/setup.sh``); ``--peers-python ''`` leaves them out.

    .venv/bin/python benchmarks/bench_tables.py --reps 3 --out _build/bench/tables.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARMS = ("ctrlib-sparse", "ctrlib-dense", "deepctr-torch", "fuxictr")
SMALL_FIELDS, SMALL_ROWS = 9, 1_000


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="10000,100000,1000000,10000000", help="rows of the big table, comma-separated")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=81_920, help="training rows per epoch")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run: a warm-up, then the measured ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peers-python", default=os.path.join(HERE, "peers", ".venv-peers", "bin", "python"),
                   help="the peers' venv python ('' to leave the peers out)")
    p.add_argument("--out", default=None, help="append one JSON line per run here")
    p.add_argument("--table", default=None, metavar="JSONL", help="only print the table of the runs in JSONL")
    p.add_argument("--paired-rounds", type=int, default=0, metavar="N",
                   help="instead: N rounds of both ctrlib arms in one process at the first --rows (paired ratios)")
    p.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)  # one run, in this process
    p.add_argument("--table-rows", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


# ----------------------------------------------------------------------------- one run (a worker)

def synthetic(rows: int, samples: int):
    """Random ids (field f0 in [0, rows), f1..f9 in [0, 1000)) and labels, the same for every arm."""
    import numpy as np
    rng = np.random.default_rng(0)
    sizes = [rows] + [SMALL_ROWS] * SMALL_FIELDS
    x = {f"f{i}": rng.integers(0, v, samples, dtype=np.int64) for i, v in enumerate(sizes)}
    y = (rng.random(samples) < 0.2).astype(np.float32)
    return sizes, x, y


def append_line(path: str, record: dict) -> None:
    """Append one JSON line to ``path`` (its folder made if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ctrlib_setup(sizes, x, y):
    """The schema's TensorData and a function (arm, epochs) -> the seconds of each epoch of one fit."""
    import numpy as np
    import pandas as pd
    from ctrlib import TrainConfig, fit, seed_everything
    from ctrlib.data import Categorical, Schema, TensorData
    from ctrlib.models import DeepFM
    schema = Schema(tuple(Categorical(name, v) for name, v in zip(x, sizes)), ("label",))
    data = TensorData.from_frame(pd.DataFrame({**x, "label": y.astype(np.float32)}), schema)

    def run(arm: str, epochs: int) -> list[float]:
        seed_everything(0)
        model = DeepFM(schema, 10, (400, 400, 400), dropout=0.2)
        how = {"embedding_update": "sparse", "embedding_l2_rows": "batch"} if arm == "ctrlib-sparse" else \
              {"embedding_update": "dense", "embedding_l2_rows": "all"}
        cfg = TrainConfig(epochs=epochs, batch_size=4096, lr=1e-3, embedding_l2=0.05, grad_clip=10.0,
                          progress=False, **how)
        return list(fit(model, data, None, cfg).history["seconds"])
    return run


def run_ctrlib(arm: str, sizes, x, y, args) -> list[float]:
    import torch
    assert torch.get_num_threads() == args.threads
    return ctrlib_setup(sizes, x, y)(arm, args.epochs)


def paired_in_process(args) -> None:
    """Both ctrlib arms alternately in ONE process: each round trains a fresh model with each arm
    (order alternating), and the round's sparse/dense ratio of median epoch throughputs is paired.
    One process removes what differs between fresh processes (memory layout, the allocator's warm-up,
    what the previous process left in the page cache), which on this VM moved single runs by +-10%."""
    import random

    import torch
    torch.set_num_threads(args.threads)
    run = ctrlib_setup(*synthetic(args.table_rows, args.samples))
    ratios, rates = [], {"ctrlib-sparse": [], "ctrlib-dense": []}
    for rnd in range(args.paired_rounds):
        order = list(rates) if rnd % 2 == 0 else list(rates)[::-1]
        for arm in order:
            rates[arm].append(args.samples / statistics.median(run(arm, args.epochs)[1:]))
        ratios.append(rates["ctrlib-sparse"][-1] / rates["ctrlib-dense"][-1])
        print(f"round {rnd}: sparse {rates['ctrlib-sparse'][-1]:,.0f}  dense {rates['ctrlib-dense'][-1]:,.0f}  "
              f"ratio {ratios[-1]:.3f}  load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rng = random.Random(0)  # a bootstrap over rounds for the median ratio's interval
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    summary = {"paired_in_process": True, "table_rows": args.table_rows, "samples": args.samples,
               "epochs": args.epochs, "threads": args.threads, "rounds": args.paired_rounds,
               "samples_per_s": {a: [round(v, 1) for v in r] for a, r in rates.items()},
               "ratios": [round(r, 4) for r in ratios], "median_ratio": round(statistics.median(ratios), 4),
               "median_ratio_95": [round(boot[49], 4), round(boot[1949], 4)], "torch": torch.__version__}
    print(json.dumps(summary))
    if args.out:
        append_line(args.out, summary)


def run_deepctr(sizes, x, y, args) -> list[float]:
    sys.path.insert(0, os.path.join(HERE, "peers"))
    import common
    common.block_deepctr_version_check()
    import torch
    from deepctr_torch.callbacks import Callback
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DeepFM
    features = [SparseFeat(name, vocabulary_size=v, embedding_dim=10) for name, v in zip(x, sizes)]
    l2 = 0.05 / 2 * 4096  # its loss SUMS the BCE over the batch: the same gradient as lambda=0.05 on the mean
    model = DeepFM(features, features, dnn_hidden_units=(400, 400, 400), l2_reg_linear=l2, l2_reg_embedding=l2,
                   l2_reg_dnn=0, dnn_dropout=0.2, dnn_activation="relu", task="binary", device="cpu", seed=0)
    model.compile(torch.optim.Adam(model.parameters(), lr=1e-3), "binary_crossentropy")
    seconds = []

    class Timer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=4096, epochs=args.epochs, verbose=0, shuffle=True, callbacks=[Timer()])
    return seconds


def run_fuxictr(sizes, x, y, args) -> list[float]:
    sys.path.insert(0, os.path.join(HERE, "peers"))
    import logging
    from collections import OrderedDict

    import numpy as np
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders.npz_dataloader import NpzDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from run_fuxictr import fuxictr_deepfm_class
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="bench-tables-fuxictr-")
    feature_map = FeatureMap("tables", work)
    feature_map.features = OrderedDict(
        (name, {"source": "", "type": "categorical", "vocab_size": v, "padding_idx": None})
        for name, v in zip(x, sizes))
    feature_map.labels = ["label"]
    feature_map.num_fields, feature_map.default_emb_dim = len(sizes), 10
    feature_map.set_column_index()
    path = os.path.join(work, "train.npz")
    np.savez(path, **x, label=y)
    seed_everything(seed=0)
    params = dict(model_root=os.path.join(work, "checkpoints"), metrics=["AUC"], verbose=0, gpu=-1,
                  optimizer="adam", loss="binary_crossentropy", learning_rate=1e-3, embedding_regularizer=0.05,
                  net_regularizer=0)
    model = fuxictr_deepfm_class()(feature_map, embedding_dim=10, hidden_units=[400, 400, 400], net_dropout=0.2,
                                   **params)
    loader = NpzDataLoader(feature_map, path, batch_size=4096, shuffle=True, num_workers=0)
    # what BaseModel.fit sets before its epochs (no validation here)
    model._max_gradient_norm, model._stop_training, model._total_steps = 10.0, False, 0
    model._eval_steps = 10 ** 12
    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train_epoch(loader)
        seconds.append(time.perf_counter() - start)
    return seconds


def worker(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    sizes, x, y = synthetic(args.table_rows, args.samples)
    if args.worker.startswith("ctrlib"):
        seconds = run_ctrlib(args.worker, sizes, x, y, args)
    elif args.worker == "deepctr-torch":
        seconds = run_deepctr(sizes, x, y, args)
    else:
        seconds = run_fuxictr(sizes, x, y, args)
    print(json.dumps({"arm": args.worker, "table_rows": args.table_rows, "samples": args.samples,
                      "epoch_seconds": [round(s, 4) for s in seconds],
                      "samples_per_s": round(args.samples / statistics.median(seconds[1:]), 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1),
                      "threads": args.threads, "torch": torch.__version__}))


# ----------------------------------------------------------------------------- the interleaved driver

def drive(args) -> None:
    arms = [a for a in args.arms.split(",") if args.peers_python or a.startswith("ctrlib")]
    rows = [int(r) for r in args.rows.split(",")]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for rep in range(args.reps):
        order = arms if rep % 2 == 0 else arms[::-1]
        for v in rows:
            for arm in order:
                python = sys.executable if arm.startswith("ctrlib") else args.peers_python
                cmd = [python, os.path.abspath(__file__), "--worker", arm, "--table-rows", str(v),
                       "--samples", str(args.samples), "--threads", str(args.threads),
                       "--epochs", str(args.epochs)]
                load = os.getloadavg()[0]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{arm} at {v:,} rows failed:\n{done.stderr[-3000:]}")
                result = {**json.loads(done.stdout.strip().splitlines()[-1]), "rep": rep, "loadavg_1min": load}
                results.append(result)
                print(f"rep {rep} {arm:14s} {v:>10,} rows: {result['samples_per_s']:>9,.0f} samples/s  "
                      f"peak {result['peak_rss_mb']:,.0f} MB  load {load:.1f}", file=sys.stderr)
                if args.out:
                    append_line(args.out, result)
    print(table(results))


def table(results: list[dict]) -> str:
    """The markdown table of medians over repetitions (throughput, peak memory) per rows x arm, the
    ratios of those medians, and the number of runs behind each cell."""
    arms = list(dict.fromkeys(r["arm"] for r in results))
    rows = sorted({r["table_rows"] for r in results})
    med = {(v, a): (statistics.median(r["samples_per_s"] for r in results if r["table_rows"] == v and r["arm"] == a),
                    statistics.median(r["peak_rss_mb"] for r in results if r["table_rows"] == v and r["arm"] == a))
           for v in rows for a in arms if any(r["table_rows"] == v and r["arm"] == a for r in results)}
    peers = [a for a in arms if not a.startswith("ctrlib")]
    head = ["rows of the big table", *(f"{a} samples/s" for a in arms), "sparse / dense", "sparse / own 10^4",
            *(["sparse / faster peer"] if peers else []), *(f"{a} peak MB" for a in arms), "load (1 min)",
            "runs per arm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = med.get((rows[0], "ctrlib-sparse"), (float("nan"),))[0]
    for v in rows:
        rate = {a: med[v, a][0] for a in arms if (v, a) in med}
        cells = [f"{v:,}"] + [f"{rate[a]:,.0f}" if a in rate else "" for a in arms]
        s, d = rate.get("ctrlib-sparse", float("nan")), rate.get("ctrlib-dense", float("nan"))
        cells += [f"{s / d:.2f}" if d > 0 else "", f"{s / base:.2f}"]
        if peers:
            fastest = max(rate.get(a, float("nan")) for a in peers)
            cells.append(f"{s / fastest:.2f}" if fastest > 0 else "")
        cells += [f"{med[v, a][1]:,.0f}" if (v, a) in med else "" for a in arms]
        loads = [r["loadavg_1min"] for r in results if r["table_rows"] == v]
        cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
        cells.append(str(min(sum(r["table_rows"] == v and r["arm"] == a for r in results) for a in arms)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
    elif args.paired_rounds:
        args.table_rows = int(args.rows.split(",")[0])
        paired_in_process(args)
    elif args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()

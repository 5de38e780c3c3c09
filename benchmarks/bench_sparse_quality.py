#!/usr/bin/env python3
"""Does the row-wise default cost test AUC? Sparse (lazy Adam, batch-rows L2) vs dense (Adam on every
row, full-table L2) on the same data, the same seeds, trained to early stopping.

Datasets (each arm gets identical inputs; only ``embedding_update`` / ``embedding_l2_rows`` differ):

* ``world``: ``CTRWorld(seed=0).sample(N)``, split by time 80/10/10; chapter 2's DeepFM and config
  (embedding 16, MLP 256-128, dropout 0.1, batch 1024, Adam 5e-3, embedding L2 1e-5, patience 2);
* ``world_no_l2``: the same without the embedding L2 (only the update differs between the arms);
* ``movielens``: MovieLens-100K, label rating >= 4, chapter 4's seven fields and split, DeepFM
  (embedding 10, MLP 400-400-400), batch 1024, Adam 1e-3, no L2, patience 2;
* ``bars``: the world's 250,000-row sample in the BARS DeepFM config of ``benchmarks/peers`` (embedding
  10, MLP 400-400-400, dropout 0.2, batch 4096, Adam 1e-3, embedding L2 0.05, clip 10, lr x0.1 on plateau),
  where the two L2 forms differ most (``--datasets bars`` to add it).

For each dataset: test AUC per seed and arm, mean and sd over seeds, and the sparse - dense
difference with the claims protocol's 95% interval (``ctrlib.experiment.compare``: paired bootstrap
over test rows combined with the seed spread). "within noise" = the interval contains 0.

    .venv/bin/python benchmarks/bench_sparse_quality.py --seeds 0 1 2 --out _build/bench/sparse_quality.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import pandas as pd
import torch

from ctrlib import TrainConfig
from ctrlib.data import (Categorical, CTRWorld, Schema, TensorData, encode_columns, load_movielens_100k,
                         split_by_time)
from ctrlib.experiment import compare, run_arm
from ctrlib.models import DeepFM

ARMS = {"sparse": {"embedding_update": "sparse", "embedding_l2_rows": "batch"},
        "dense": {"embedding_update": "dense", "embedding_l2_rows": "all"}}


def world(rows: int):
    w = CTRWorld(seed=0)
    parts = split_by_time(w.sample(rows, seed=0), valid=0.1, test=0.1)
    schema = w.schema()
    return schema, [TensorData.from_frame(p, schema) for p in parts]


def movielens():
    ml = load_movielens_100k()
    r = ml.ratings.merge(ml.users, on="user_id").merge(ml.items[["item_id", "year", "genres"]], on="item_id")
    r["label"] = (r.rating >= 4).astype("float32")
    r["age_bucket"] = pd.cut(r.age, [0, 17, 24, 34, 44, 49, 55, 200]).astype(str)
    r["genre"] = r.genres.fillna("").str.split("|").str[0]
    r["decade"] = (r.year.fillna(0) // 10).astype(int)
    cols = ["user_id", "item_id", "age_bucket", "gender", "occupation", "genre", "decade"]
    train, valid, test = split_by_time(r)
    vocabs, parts = encode_columns(train, [valid, test], cols)
    schema = Schema(tuple(Categorical(c, vocabs[c].size) for c in cols), ("label",))
    return schema, [TensorData.from_frame(p, schema) for p in parts]


def setups(names, world_rows):
    if "world" in names:
        schema, data = world(world_rows)
        yield "world", data, lambda: DeepFM(schema, 16, (256, 128), 0.1), \
            TrainConfig(epochs=30, batch_size=1024, lr=5e-3, embedding_l2=1e-5, patience=2)
    if "world_no_l2" in names:
        schema, data = world(world_rows)
        yield "world_no_l2", data, lambda: DeepFM(schema, 16, (256, 128), 0.1), \
            TrainConfig(epochs=30, batch_size=1024, lr=5e-3, patience=2)
    if "movielens" in names:
        schema, data = movielens()
        yield "movielens", data, lambda: DeepFM(schema, 10, (400, 400, 400)), \
            TrainConfig(epochs=30, batch_size=1024, lr=1e-3, patience=2)
    if "bars" in names:
        schema, data = world(250_000)
        yield "bars", data, lambda: DeepFM(schema, 10, (400, 400, 400), 0.2), \
            TrainConfig(epochs=100, batch_size=4096, lr=1e-3, embedding_l2=0.05, grad_clip=10.0, lr_decay=0.1,
                        patience=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["world", "movielens"],
                   choices=["world", "world_no_l2", "movielens", "bars"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--world-rows", type=int, default=300_000)
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for name, (train, valid, test), build, cfg in setups(args.datasets, args.world_rows):
        arms = {arm: run_arm(arm, build, train, valid, test, dataclasses.replace(cfg, progress=False, **how),
                             args.seeds)
                for arm, how in ARMS.items()}
        runs = [{"arm": arm, "seed": r.seed, "test_auc": round(r.metrics["auc"], 5),
                 "test_logloss": round(r.metrics["logloss"], 5), "epochs_run": len(r.fit.history),
                 "best_epoch": r.fit.best_epoch, "stopped_by": r.stop_reason,
                 "train_seconds": round(r.fit.train_seconds, 1)} for arm, a in arms.items() for r in a.runs]
        evidence = compare(arms["dense"], arms["sparse"], "auc", n_boot=args.boot)  # delta = sparse - dense
        evidence["within_noise"] = bool(evidence["ci"][0] <= 0 <= evidence["ci"][1])
        report[name] = {"runs": runs, "sparse_minus_dense": evidence, "n_train": len(train), "n_test": len(test),
                        "config": {k: v for k, v in vars(cfg).items()}}
        print(json.dumps({name: {k: evidence[k] for k in ("delta", "ci", "per_seed", "a", "b", "within_noise")}}),
              file=sys.stderr)
    report["machine"] = {"threads": args.threads, "torch": torch.__version__, "loadavg_1min": os.getloadavg()[0]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()

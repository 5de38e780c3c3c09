#!/usr/bin/env python3
"""Export a CTR-world sample as BARS-layout CSVs: ``train.csv``, ``valid.csv``, ``test.csv``,
each a ``label`` column (0/1) followed by the categorical columns (raw ids), split by time.

Every library (ctrlib and the peers) reads these same files and builds its own vocabulary from
``train.csv`` (min count 1, unseen values -> an out-of-vocabulary id).

    .venv/bin/python benchmarks/peers/export_data.py --rows 250000 --out benchmarks/peers/data
"""
from __future__ import annotations

import argparse
import json
import os

from ctrlib.data import CTRWorld, split_by_time

FIELDS = ("user_id", "age", "gender", "city", "device", "item_id", "category", "brand", "price",
          "hour", "weekday")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=250_000, help="total rows; 80/10/10 by time")
    p.add_argument("--seed", type=int, default=0, help="sample seed (the world is CTRWorld(seed=0))")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    world = CTRWorld(seed=0)
    df = world.sample(args.rows, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    info = {"world": "CTRWorld(seed=0)", "rows": args.rows, "sample_seed": args.seed, "fields": list(FIELDS)}
    for name, part in zip(("train", "valid", "test"), split_by_time(df, 0.1, 0.1)):
        part[["label", *FIELDS]].astype({"label": "int8"}).to_csv(os.path.join(args.out, f"{name}.csv"), index=False)
        info[name] = {"rows": len(part), "ctr": round(float(part["label"].mean()), 5),
                      "oracle": {k: round(v, 6) for k, v in world.oracle(part).items()}}
    with open(os.path.join(args.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

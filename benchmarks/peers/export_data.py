#!/usr/bin/env python3
"""Export a CTR-world sample as BARS-layout CSVs: ``train.csv``, ``valid.csv``, ``test.csv``,
each a ``label`` column (0/1) followed by the categorical columns (raw ids), split by time.

Every library (ctrlib and the peers) reads these same files and builds its own vocabulary from
``train.csv`` (min count 1, unseen values -> an out-of-vocabulary id).

    .venv/bin/python benchmarks/peers/export_data.py --rows 250000 --out benchmarks/peers/data

With ``--history L`` (the DIN benchmark) the world gets time-ordered behaviour histories
(``CTRWorld(seed=0, history_len=L, history_match=3.0)``) and each split is written as
``<split>.npz`` instead: the categorical columns as model ids (1-based, the world's own dense
ids, so no vocabulary is built), ``hist_item_id`` and ``hist_category`` ``[N, L]`` with the real
behaviours first (oldest first) and 0-padding after them, ``hist_length`` and ``label``.
``info.json`` then holds ``vocab_sizes`` (rows per table, padding and a spare row included).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ctrlib.data import CTRWorld, split_by_time

FIELDS = ("user_id", "age", "gender", "city", "device", "item_id", "category", "brand", "price",
          "hour", "weekday")


def history_arrays(part) -> dict[str, np.ndarray]:
    """The npz columns of one split; histories moved to the front of each row (DeepCTR-Torch masks
    a history by its length, so its real positions must come first; ctrlib masks id 0 anywhere)."""
    out = {f: part[f].to_numpy(np.int64) for f in FIELDS}
    items, cats = np.stack(part["hist_item_id"].to_numpy()), np.stack(part["hist_category"].to_numpy())
    length = (items > 0).sum(axis=1)
    # the world pads on the left: roll each row left by its padding so the real ones come first
    shift = (np.arange(items.shape[1])[None, :] + (items.shape[1] - length)[:, None]) % items.shape[1]
    out["hist_item_id"] = np.take_along_axis(items, shift, axis=1)
    out["hist_category"] = np.take_along_axis(cats, shift, axis=1)
    out["hist_length"] = length.astype(np.int64)
    out["label"] = part["label"].to_numpy(np.float32)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=250_000, help="total rows; 80/10/10 by time")
    p.add_argument("--seed", type=int, default=0, help="sample seed (the world is CTRWorld(seed=0))")
    p.add_argument("--history", type=int, default=0, help="> 0: behaviour histories of this length, npz files")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.history:
        world, spec = CTRWorld(seed=0, history_len=args.history, history_match=3.0), \
            f"CTRWorld(seed=0, history_len={args.history}, history_match=3.0)"
    else:
        world, spec = CTRWorld(seed=0), "CTRWorld(seed=0)"
    df = world.sample(args.rows, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    info = {"world": spec, "rows": args.rows, "sample_seed": args.seed, "fields": list(FIELDS)}
    if args.history:
        info["vocab_sizes"] = world.vocab_sizes()
    for name, part in zip(("train", "valid", "test"), split_by_time(df, 0.1, 0.1)):
        if args.history:
            np.savez(os.path.join(args.out, f"{name}.npz"), **history_arrays(part))
        else:
            part[["label", *FIELDS]].astype({"label": "int8"}).to_csv(os.path.join(args.out, f"{name}.csv"),
                                                                      index=False)
        info[name] = {"rows": len(part), "ctr": round(float(part["label"].mean()), 5),
                      "oracle": {k: round(v, 6) for k, v in world.oracle(part).items()}}
    with open(os.path.join(args.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""DeepFM on a BARS-layout CSV dataset with ctrlib: the same flags and JSON keys as the peer runners.

Trains on DIR/train.csv (early stopping on DIR/valid.csv AUC, best weights restored), evaluates on
DIR/test.csv and prints ONE JSON line on stdout. Throughput counts ``fit``'s training loop per
epoch (shuffle + batching + forward + backward + step + L2 + gradient clipping), validation
excluded: the ``seconds`` column of ``fit``'s history. CSV reading and id encoding are excluded,
as for the peers.

The protocol is FuxiCTR's (and BARS'): mean BCE + lambda/2 * ||E||^2 on every embedding table
(the FM/DNN table and the order-1 weights, as FuxiCTR does), Adam, gradient-norm clip 10 and the
learning rate x0.1 after a non-improving epoch (``--grad-clip 0 --lr-decay 0`` switch them off).
So the embedding tables get dense Adam and the full-table L2 (``--embedding-update dense --emb-l2-rows
all``, the BARS form, and the only one the peers have); ``--embedding-update sparse --emb-l2-rows
batch`` is ``ctrlib.fit``'s default (lazy Adam and the L2 on the rows a batch touches).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--lr-decay", type=float, default=0.1, help="lr factor after a non-improving epoch (0: off)")
    p.add_argument("--grad-clip", type=float, default=10.0, help="gradient-norm clip (0: off)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast (fp32 master weights; embeddings stay fp32)")
    p.add_argument("--embedding-update", choices=["sparse", "dense"], default="dense",
                   help="TrainConfig.embedding_update (default: dense, the BARS protocol)")
    p.add_argument("--emb-l2-rows", choices=["batch", "all"], default="all",
                   help="TrainConfig.embedding_l2_rows (default: all, the BARS protocol)")
    args = p.parse_args()
    sys.stdout = sys.stderr
    import numpy as np
    import pandas as pd
    import torch
    torch.set_num_threads(args.threads)
    import ctrlib
    from ctrlib import TrainConfig, fit, predict, seed_everything
    from ctrlib.data import Categorical, Schema, TensorData, encode_columns
    from ctrlib.models import DeepFM

    # ---- preprocessing (not timed): vocabularies from train only, unseen values -> OOV ----
    dfs = [pd.read_csv(f"{args.data}/{s}.csv") for s in ("train", "valid", "test")]
    cols = common.feature_columns(args.data)
    vocabs, encoded = encode_columns(dfs[0], dfs[1:], cols)
    schema = Schema(tuple(Categorical(c, vocabs[c].size) for c in cols), ("label",))
    train, valid, test = (TensorData.from_frame(df.astype({"label": np.float32}), schema) for df in encoded)

    seed_everything(args.seed)
    hidden = tuple(int(h) for h in args.mlp.split(","))
    model = DeepFM(schema, args.emb, hidden, dropout=args.dropout, batch_norm=args.batch_norm)
    extra = {}
    if args.precision == "bf16":
        extra["autocast"] = "bf16"
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=args.net_reg,
                      embedding_l2=args.emb_reg, patience=args.patience, monitor="auc",
                      lr_decay=args.lr_decay or None, grad_clip=args.grad_clip or None, seed=args.seed,
                      embedding_update=args.embedding_update, embedding_l2_rows=args.emb_l2_rows,
                      progress=False, **extra)
    result = fit(model, train, valid, cfg)
    hist = result.history
    common.report(args, "ctrlib", ctrlib.__version__, len(train), list(hist["seconds"]), list(hist["valid_auc"]),
                  test["label"].numpy(), predict(model, test), precision=args.precision,
                  lr_decay=args.lr_decay, grad_clip=args.grad_clip, embedding_update=args.embedding_update,
                  emb_l2_rows=args.emb_l2_rows,
                  best_epoch_restored=int(result.best_epoch))


if __name__ == "__main__":
    main()

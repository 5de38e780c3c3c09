#!/usr/bin/env python3
"""DeepFM on a BARS-layout CSV dataset with DeepCTR-Torch 0.3.0 (its DeepFM, fit, EarlyStopping).

Prints ONE JSON line (the keys of common.report). Throughput: DeepCTR-Torch's own ``fit`` loop per
epoch (its DataLoader over a TensorDataset + forward/backward/step + its L2), from the epoch-begin
to the epoch-end callback, minus the validation ``evaluate`` it runs inside that span.

What we do about its quirks (see benchmarks/README.md):
* ``import deepctr_torch`` starts a thread that calls ``requests.get`` on PyPI with no timeout:
  ``requests.get`` is replaced by a function that fails at once, before the import.
* it SUMS the BCE over the batch and adds ``l2 * ||W||^2``; BARS/FuxiCTR take the batch MEAN and add
  ``lambda/2 * ||W||^2``. The same gradients need ``l2 = lambda/2 * batch`` (embeddings and the
  order-1 weights, both of which FuxiCTR regularises too).
* ``verbose >= 1`` computes sklearn AUC on every training batch: we train with ``verbose=0``.
* ``EarlyStopping(restore_best_weights=True)`` restores only when it stops early: we restore the
  best weights ourselves. It has no learning-rate decay on plateau and no gradient clipping.
* its DNN init is its default N(0, 1e-4) (``init_std``), unlike FuxiCTR's xavier: left as is.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    sys.stdout = sys.stderr
    import numpy as np
    import pandas as pd
    import torch
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    common.block_deepctr_version_check()
    import deepctr_torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DeepFM

    # ---- preprocessing (not timed): vocabulary from train, ids 1..V, 0 = unseen ----
    cols = common.feature_columns(args.data)
    frames = {s: pd.read_csv(f"{args.data}/{s}.csv") for s in ("train", "valid", "test")}
    x = {s: {} for s in frames}
    features = []
    for c in cols:
        known = np.unique(frames["train"][c].to_numpy())
        for s, df in frames.items():
            v = df[c].to_numpy()
            pos = np.searchsorted(known, v).clip(0, len(known) - 1)
            x[s][c] = np.where(known[pos] == v, pos + 1, 0).astype(np.int64)
        features.append(SparseFeat(c, vocabulary_size=len(known) + 1, embedding_dim=args.emb))
    y = {s: df["label"].to_numpy().astype(np.float32) for s, df in frames.items()}

    l2 = args.emb_reg / 2 * args.batch  # sum-of-batch loss: lambda/2 * batch (see the docstring)
    model = DeepFM(features, features, dnn_hidden_units=tuple(int(h) for h in args.mlp.split(",")),
                   l2_reg_linear=l2, l2_reg_embedding=l2, l2_reg_dnn=args.net_reg / 2 * args.batch,
                   dnn_dropout=args.dropout, dnn_activation="relu", dnn_use_bn=args.batch_norm,
                   task="binary", device="cpu", seed=args.seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy", metrics=["auc"])

    epoch_seconds, val_auc = common.deepctr_fit(model, x, y, args)  # training time per epoch, validation excluded
    p = model.predict(x["test"], batch_size=args.batch).reshape(-1)
    common.report(args, "deepctr-torch", deepctr_torch.__version__, len(y["train"]), epoch_seconds, val_auc,
                  y["test"], p)


if __name__ == "__main__":
    main()

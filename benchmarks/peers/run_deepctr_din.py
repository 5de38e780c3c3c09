#!/usr/bin/env python3
"""DIN on the history npz files of ``export_data.py --history L`` with DeepCTR-Torch 0.3.0: ONE JSON line.

Its own DIN, fit and EarlyStopping with its defaults (activation unit 64-16 with Dice, tower
256-128 with ReLU, no dropout), except ``l2_reg_embedding=0`` (ctrlib's run has no L2 either).
Behaviours are (item, category) ``VarLenSparseFeat``s sharing the candidate's tables, masked by
``hist_length`` (the export puts the real behaviours first). Throughput as in ``run_deepctr.py``:
epoch begin to epoch end minus the validation pass inside it. The same quirk handling: the
network version check is disabled, ``verbose=0``, best weights restored by us.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    args = common.din_parser(__doc__.splitlines()[0]).parse_args()
    sys.stdout = sys.stderr
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    common.block_deepctr_version_check()
    import deepctr_torch
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    with open(f"{args.data}/info.json") as f:
        info = json.load(f)
    sizes, fields = info["vocab_sizes"], info["fields"]
    splits = {s: np.load(f"{args.data}/{s}.npz") for s in ("train", "valid", "test")}
    L = splits["train"]["hist_item_id"].shape[1]
    features = [SparseFeat(c, vocabulary_size=sizes[c], embedding_dim=args.emb) for c in fields]
    features += [VarLenSparseFeat(SparseFeat(f"hist_{c}", vocabulary_size=sizes[c], embedding_dim=args.emb,
                                             embedding_name=c), maxlen=L, length_name="hist_length")
                 for c in ("item_id", "category")]
    names = [*fields, "hist_item_id", "hist_category", "hist_length"]
    x = {s: {k: z[k] for k in names} for s, z in splits.items()}
    y = {s: z["label"] for s, z in splits.items()}

    model = DIN(features, ["item_id", "category"], dnn_hidden_units=common.ints(args.mlp),
                att_hidden_size=common.ints(args.att_mlp), att_activation="Dice", dnn_activation="relu",
                l2_reg_embedding=args.emb_reg / 2 * args.batch, dnn_dropout=args.dropout, task="binary",
                device="cpu", seed=args.seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy", metrics=["auc"])

    epoch_seconds, val_auc = common.deepctr_fit(model, x, y, args)  # training time per epoch, validation excluded
    p = model.predict(x["test"], batch_size=args.batch).reshape(-1)
    common.report(args, "deepctr-torch", deepctr_torch.__version__, len(y["train"]), epoch_seconds, val_auc,
                  y["test"], p, model="din", history_len=L)


if __name__ == "__main__":
    main()

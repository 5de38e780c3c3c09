#!/usr/bin/env python3
"""DIN on the history npz files of ``export_data.py --history L`` with ctrlib: prints ONE JSON line.

The peers' DIN defaults (DeepCTR-Torch 0.3.0): embedding ``--emb`` (16) per id, behaviours
described by (item, category), the activation unit MLP 64-16 with Dice over
``[e_j, v, e_j - v, e_j * v]``, no softmax; the tower MLP 256-128 with ReLU, no dropout, no
batch norm; Adam, mean BCE, no L2, no lr decay or clipping (DeepCTR-Torch has neither).
Throughput counts ``fit``'s training loop per epoch, validation excluded.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    p = common.din_parser(__doc__.splitlines()[0])
    p.add_argument("--init-std", type=float, default=0.0,
                   help="> 0: hidden layers' weights from N(0, std), as DeepCTR-Torch's init_std (ablation)")
    args = p.parse_args()
    sys.stdout = sys.stderr
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import ctrlib
    from ctrlib import TrainConfig, fit, predict, seed_everything
    from ctrlib.data import Categorical, Schema, Sequence, TensorData
    from ctrlib.models import DIN

    with open(f"{args.data}/info.json") as f:
        info = json.load(f)
    sizes, fields = info["vocab_sizes"], info["fields"]
    splits = [np.load(f"{args.data}/{s}.npz") for s in ("train", "valid", "test")]
    L = splits[0]["hist_item_id"].shape[1]
    schema = Schema(tuple(Categorical(c, sizes[c]) for c in fields)
                    + (Sequence("hist_item_id", sizes["item_id"], L, embedding="item_id"),
                       Sequence("hist_category", sizes["category"], L, embedding="category")), ("label",))
    train, valid, test = (TensorData({k: torch.from_numpy(z[k]) for k in (*fields, "hist_item_id", "hist_category",
                                                                          "label")}) for z in splits)

    seed_everything(args.seed)
    model = DIN(schema, args.emb, attention="din", attention_hidden=common.ints(args.att_mlp),
                attention_activation="dice", activation="relu", hidden=common.ints(args.mlp), dropout=args.dropout)
    if args.init_std:  # DeepCTR-Torch's DNN init: the hidden Linear layers' weights ~ N(0, init_std)
        for mlp in (model.mlp.net, model.attention.mlp.net):
            for layer in list(mlp)[:-1]:
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.normal_(layer.weight, 0.0, args.init_std)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, patience=args.patience, monitor="auc",
                      seed=args.seed, progress=False)
    result = fit(model, train, valid, cfg)
    hist = result.history
    common.report(args, "ctrlib", ctrlib.__version__, len(train), list(hist["seconds"]), list(hist["valid_auc"]),
                  test["label"].numpy(), predict(model, test), model="din", history_len=L, init_std=args.init_std,
                  best_epoch_restored=int(result.best_epoch))


if __name__ == "__main__":
    main()

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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    args = common.din_parser(__doc__.splitlines()[0]).parse_args()
    sys.stdout = sys.stderr
    import numpy as np
    import requests
    import torch
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)

    def offline(*a, **k):
        raise OSError("no network: DeepCTR-Torch's version check is disabled in benchmarks")
    requests.get = offline
    import deepctr_torch
    from deepctr_torch.callbacks import Callback, EarlyStopping
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

    in_eval, epoch_seconds, val_auc = [0.0], [], []
    evaluate = model.evaluate

    def timed_evaluate(*a, **k):
        t = time.perf_counter()
        try:
            return evaluate(*a, **k)
        finally:
            in_eval[0] += time.perf_counter() - t
    model.evaluate = timed_evaluate

    class Timer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            in_eval[0], self.start = 0.0, time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start - in_eval[0])
            val_auc.append(float((logs or {}).get("val_auc", float("nan"))))

    stop = EarlyStopping(monitor="val_auc", mode="max", patience=args.patience, restore_best_weights=True)
    model.fit(x["train"], y["train"], batch_size=args.batch, epochs=args.epochs, verbose=0,
              validation_data=(x["valid"], y["valid"]), shuffle=True, callbacks=[Timer(), stop])
    if stop.best_weights is not None:
        model.load_state_dict(stop.best_weights)
    p = model.predict(x["test"], batch_size=args.batch).reshape(-1)
    common.report(args, "deepctr-torch", deepctr_torch.__version__, len(y["train"]), epoch_seconds, val_auc,
                  y["test"], p, model="din", history_len=L)


if __name__ == "__main__":
    main()

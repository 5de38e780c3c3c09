"""What the three runners share: the command line, the logloss, the JSON line on stdout.

Every runner takes the same flags (the BARS DeepFM config by default) and prints exactly one JSON
line with the same keys; anything a library prints is sent to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys

# The real stdout, kept before a runner redirects sys.stdout to stderr (libraries print freely).
STDOUT = sys.stdout


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="folder with BARS-layout train.csv, valid.csv, test.csv")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--emb", type=int, default=10)
    p.add_argument("--mlp", default="400,400,400")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--emb-reg", type=float, default=0.05,
                   help="lambda of lambda/2*||E||^2 added to the MEAN batch loss (FuxiCTR/BARS convention)")
    p.add_argument("--net-reg", type=float, default=0.0, help="the same for the DNN weights")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--patience", type=int, default=2)
    return p


def din_parser(description: str) -> argparse.ArgumentParser:
    """The DIN runners' flags: the same as DeepFM's with DeepCTR-Torch's DIN defaults
    (embedding 16, tower 256-128, activation unit 64-16, no dropout, no L2), batch 1024."""
    p = parser(description)
    p.add_argument("--att-mlp", default="64,16", help="the activation unit's hidden layers")
    p.set_defaults(emb=16, mlp="256,128", dropout=0.0, emb_reg=0.0, batch=1024)
    return p


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(h) for h in text.split(","))


def block_deepctr_version_check() -> None:
    """``import deepctr_torch`` starts a thread that calls ``requests.get`` on PyPI with no timeout:
    make ``requests.get`` fail at once (call before the import)."""
    import requests

    def offline(*a, **k):
        raise OSError("no network: DeepCTR-Torch's version check is disabled in benchmarks")
    requests.get = offline


def deepctr_fit(model, x, y, args) -> tuple[list[float], list[float]]:
    """Train a compiled DeepCTR-Torch model with its own ``fit`` (``verbose=0``) and EarlyStopping
    on validation AUC; leave the best weights loaded (its EarlyStopping restores them only when it
    stops early). Returns (training seconds, validation AUC) per epoch. An epoch's time runs from
    the epoch-begin to the epoch-end callback, minus the validation pass ``fit`` runs inside it."""
    import time
    from deepctr_torch.callbacks import Callback, EarlyStopping
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
    return epoch_seconds, val_auc


def feature_columns(data: str) -> list[str]:
    with open(f"{data}/train.csv") as f:
        return [c for c in f.readline().strip().split(",") if c != "label"]


def logloss(y, p, eps: float = 1e-7) -> float:
    import numpy as np
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def report(args, lib: str, version: str, n_train: int, epoch_seconds, val_auc, y, p, **extra) -> None:
    """Print the one JSON line: throughput = median over epochs of n_train / epoch seconds."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    out = {
        "lib": lib, "version": version, "torch": torch.__version__,
        "train_samples_per_s": round(float(np.median([n_train / s for s in epoch_seconds])), 1),
        "epoch_seconds": [round(float(s), 3) for s in epoch_seconds],
        "test_auc": round(float(roc_auc_score(y, p)), 6), "test_logloss": round(logloss(y, p), 6),
        "epochs_run": len(epoch_seconds), "best_epoch": int(np.argmax(val_auc)) + 1,
        "val_auc": [round(float(v), 6) for v in val_auc], "n_train": int(n_train), "n_test": int(len(y)),
        "threads": torch.get_num_threads(), "batch": args.batch, "emb": args.emb,
        "mlp": [int(h) for h in args.mlp.split(",")], "dropout": args.dropout, "batch_norm": args.batch_norm,
        "emb_reg": args.emb_reg, "net_reg": args.net_reg, "seed": args.seed, **extra,
    }
    STDOUT.write(json.dumps(out) + "\n")
    STDOUT.flush()

#!/usr/bin/env python3
"""DeepFM on a BARS-layout CSV dataset with FuxiCTR 2.3.10 (its preprocessing, loaders and BaseModel.fit).

Prints ONE JSON line (the keys of common.report). Throughput: FuxiCTR's ``train_epoch`` per epoch
(its loader + forward/backward/step + embedding regulariser + gradient clipping), minus the
``eval_step`` validation it runs at the end of the epoch.

What we do about its quirks (see benchmarks/README.md):
* the pip wheel has no DeepFM (``model_zoo`` is only in the repository): ``DeepFM`` below is
  composed from the wheel's public layers the way the repository's ``DeepFM.py`` composes them;
* preprocessing is its own CSV path (``FeatureProcessor`` + ``build_dataset``: polars, Ray Data,
  parquet). ``--loader npz`` (default) saves those parquet files once as .npz and trains from its
  ``NpzDataLoader`` (in-process, seeded); ``--loader parquet`` trains from Ray Data's
  ``ParquetDataLoader`` (unseeded shuffle) as ``run_expid.py`` does for CSV input;
* it needs polars < 2 (``scan_csv(dtypes=...)``) and Ray, pinned in setup.sh;
* ``BaseModel`` does not create its checkpoint folder: we create it;
* its defaults stay on: gradient-norm clip 10 and lr x0.1 after every non-improving validation.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def fuxictr_deepfm_class():
    """DeepFM composed from FuxiCTR 2.3.10's public layers as the repository's model_zoo/DeepFM.py does
    (the pip wheel has no DeepFM). Imports FuxiCTR, so call it after ``torch.set_num_threads``."""
    from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    class DeepFM(BaseModel):
        """FM (order 1 + 2 via FactorizationMachine) + MLP over the shared field embeddings."""

        def __init__(self, feature_map, embedding_dim=10, hidden_units=(400, 400, 400), net_dropout=0.0,
                     batch_norm=False, **kwargs):
            super().__init__(feature_map, model_id="DeepFM", **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.fm = FactorizationMachine(feature_map)
            self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                                 hidden_units=hidden_units, hidden_activations="ReLU", output_activation=None,
                                 dropout_rates=net_dropout, batch_norm=batch_norm)
            self.compile(kwargs["optimizer"], kwargs["loss"], kwargs["learning_rate"])
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            y = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(y)}

    return DeepFM


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--loader", choices=["npz", "parquet"], default="npz")
    p.add_argument("--workers", type=int, default=0, help="loader workers (npz: DataLoader processes)")
    p.add_argument("--workdir", default=None, help="processed data + checkpoint; reuse it to skip the rebuild")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="only profile N training steps (torch.profiler table on stdout) and exit")
    args = p.parse_args()
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    import numpy as np
    import pandas as pd
    import torch
    torch.set_num_threads(args.threads)
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    DeepFM = fuxictr_deepfm_class()

    cols = common.feature_columns(args.data)
    workdir = args.workdir or tempfile.mkdtemp(prefix="fuxictr-")
    data = os.path.abspath(args.data)
    params = dict(
        dataset_id="bars_csv", data_root=workdir, data_format="csv", min_categr_count=1,
        train_data=f"{data}/train.csv", valid_data=f"{data}/valid.csv", test_data=f"{data}/test.csv",
        feature_cols=[{"active": True, "dtype": "str", "name": cols, "type": "categorical"}],
        label_col={"dtype": "float", "name": "label"}, model_root=f"{workdir}/checkpoints",
        task="binary_classification", loss="binary_crossentropy", metrics=["AUC", "logloss"],
        optimizer="adam", learning_rate=args.lr, batch_size=args.batch, epochs=args.epochs,
        # a float regulariser means lambda/2*||W||^2 on the mean loss; int 0 means none
        embedding_regularizer=args.emb_reg or 0, net_regularizer=args.net_reg or 0,
        monitor="AUC", monitor_mode="max", early_stop_patience=args.patience, save_best_only=True,
        shuffle=True, seed=args.seed, verbose=0, gpu=-1, num_workers=args.workers,
        embedding_dim=args.emb, hidden_units=[int(h) for h in args.mlp.split(",")],
        net_dropout=args.dropout, batch_norm=args.batch_norm,  # FeatureMap.load reads embedding_dim too
    )
    seed_everything(seed=args.seed)

    # ---- preprocessing (not timed) ----
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], f"{workdir}/{params['dataset_id']}")
    feature_map.load(f"{workdir}/{params['dataset_id']}/feature_map.json", params)
    if args.loader == "npz":
        for split in ("train", "valid", "test"):
            parquet = params[f"{split}_data"]
            npz = parquet.removesuffix(".parquet") + ".npz"
            if not os.path.exists(npz):
                frame = pd.read_parquet(parquet)
                np.savez(npz, **{c: frame[c].to_numpy() for c in frame.columns})
            params[f"{split}_data"] = npz
        params["data_format"] = "npz"
    else:
        params["num_workers"] = max(1, args.workers)

    model = DeepFM(feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    if args.profile:  # where FuxiCTR's train_step spends its time (for benchmarks/README.md)
        from torch.profiler import profile
        model.train()
        model._max_gradient_norm = params.get("max_gradient_norm", 10.0)  # set by fit() otherwise
        batches = iter(train_gen)
        model.train_step(next(batches))  # warm-up
        steps = [next(batches) for _ in range(args.profile)]
        with profile() as prof:
            for batch in steps:
                model.train_step(batch)
        common.STDOUT.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16) + "\n")
        return

    # ---- timing: train_epoch minus the eval_step it calls at the end of the epoch ----
    in_eval, epoch_seconds, val_auc = [0.0], [], []
    eval_step, train_epoch, checkpoint = model.eval_step, model.train_epoch, model.checkpoint_and_earlystop

    def timed_eval_step():
        t = time.perf_counter()
        try:
            eval_step()
        finally:
            in_eval[0] += time.perf_counter() - t

    def timed_train_epoch(gen):
        in_eval[0], start = 0.0, time.perf_counter()
        train_epoch(gen)
        epoch_seconds.append(time.perf_counter() - start - in_eval[0])

    def record_val_auc(logs, *a, **k):
        val_auc.append(float(logs["AUC"]))
        return checkpoint(logs, *a, **k)

    model.eval_step, model.train_epoch, model.checkpoint_and_earlystop = \
        timed_eval_step, timed_train_epoch, record_val_auc
    model.fit(train_gen, validation_data=valid_gen, **params)  # reloads the best checkpoint at the end

    model.eval()
    ys, ps = [], []
    with torch.no_grad():
        for batch in RankDataLoader(feature_map, stage="test", **params):
            ps.append(model.forward(batch)["y_pred"].reshape(-1).numpy())
            ys.append(model.get_labels(batch).reshape(-1).numpy())
    common.report(args, "fuxictr", fuxictr.__version__, train_gen.num_samples, epoch_seconds, val_auc,
                  np.concatenate(ys), np.concatenate(ps), loader=args.loader)
    try:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

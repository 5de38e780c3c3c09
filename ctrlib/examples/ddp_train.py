"""DeepFM on the simulated world, trained data-parallel: ``torchrun --nproc_per_node 2 -m
ctrlib.examples.ddp_train --out run.json``. Without ``torchrun`` it trains in one process, the same
code path (``ctrlib.distributed.fit`` is ``ctrlib.fit`` then). Rank 0 writes the result: the
history, the seconds in the training loop, the test metrics and the test predictions (``.npy``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import ctrlib
from ctrlib import distributed
from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.models import DeepFM


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="the result JSON (rank 0 writes it; predictions beside it)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--hidden", type=int, nargs="*", default=[64, 64])
    ap.add_argument("--batch", type=int, default=512, help="the global batch size")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embedding-update", default="sparse", choices=("sparse", "dense"))
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    ap.add_argument("--world-seed", type=int, default=0, help="the simulated world and its sample")
    args = ap.parse_args(argv)

    rank, world_size = distributed.init()
    world = CTRWorld(seed=args.world_seed, n_users=args.users, n_items=args.items)
    schema = world.schema()
    train, valid, test = (TensorData.from_frame(d, schema) for d in split_by_time(world.sample(args.rows, seed=0)))
    ctrlib.seed_everything(args.seed)  # the same initial weights on every process
    model = DeepFM(schema, args.dim, tuple(args.hidden))
    result = distributed.fit(model, train, valid, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                             patience=args.patience, embedding_update=args.embedding_update, seed=args.seed,
                             progress=False)
    if rank == 0:
        out = Path(args.out)
        p = ctrlib.predict(model, test)
        np.save(out.with_suffix(".npy"), p)
        metrics = ctrlib.evaluate(model, test)
        out.write_text(json.dumps({
            "world_size": world_size, "train_seconds": result.train_seconds, "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason, "history": result.history.to_dict("list"), "test": metrics,
            "train_rows": len(train), "global_batch": args.batch, "seed": args.seed,
            "embedding_update": args.embedding_update}, indent=1))


if __name__ == "__main__":
    main()

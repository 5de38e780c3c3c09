"""Sharded embedding tables with TorchRec: ``torchrec`` ``EmbeddingBagCollection`` +
``DistributedModelParallel``, table-wise sharding (each table lives whole on one process) over gloo
on CPU. ``torchrun --nproc_per_node 2 -m ctrlib.examples.torchrec_tables --out run.json``.

The model is TorchRec's split: the sparse part (one table per id feature, the planner decides where
each lives; a lookup is an all-to-all of ids and pooled rows) and the dense part (an MLP over the
pooled embeddings, replicated and trained data-parallel by DMP's DDP wrapper). The tables are
updated by a fused row-wise Adagrad inside the backward pass (``apply_optimizer_in_backward``, the
kernels' own optimizer), the MLP by Adam. Rank 0 writes the plan (table -> sharding type and
rank), the training loss per epoch and the test AUC (the predictions of every process gathered).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctrlib import distributed, metrics
from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.layers import MLP

FEATURES = ("user_id", "item_id", "category", "brand", "hour")


class SparseDense(nn.Module):
    """logit = MLP([pooled embedding of each feature]): TorchRec's sparse arch + dense arch."""

    def __init__(self, vocab_sizes: dict[str, int], dim: int, hidden):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        self.features = list(vocab_sizes)
        self.sparse = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=n, feature_names=[f])
            for f, n in vocab_sizes.items()], device=torch.device("cpu"))
        self.dense = MLP(len(vocab_sizes) * dim, hidden, 1)

    def forward(self, kjt):
        pooled = self.sparse(kjt)                                          # KeyedTensor, [B, F * D]
        return self.dense(pooled.values()).squeeze(-1)                     # [B]


def as_kjt(batch: dict, features):
    """One id per sample and feature as a KeyedJaggedTensor (lengths all 1)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    ids = torch.stack([batch[f] for f in features])                        # [F, B]
    return KeyedJaggedTensor.from_lengths_sync(keys=list(features), values=ids.reshape(-1),
                                               lengths=torch.ones(ids.numel(), dtype=torch.int32))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=8_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="the global batch size")
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    rank, world_size = distributed.init("gloo")
    world = CTRWorld(seed=args.seed, n_users=1_000, n_items=2_000)
    sizes = {f: n for f, n in world.vocab_sizes().items() if f in FEATURES}
    schema = world.schema(list(FEATURES))
    train, _, test = (TensorData.from_frame(d, schema) for d in split_by_time(world.sample(args.rows, seed=0)))
    torch.manual_seed(args.seed)
    model = SparseDense(sizes, args.dim, (32,))
    apply_optimizer_in_backward(RowWiseAdagrad, model.sparse.parameters(), {"lr": 0.05})
    sharders = [EmbeddingBagCollectionSharder()]
    constraints = {f"t_{f}": ParameterConstraints(sharding_types=["table_wise"]) for f in sizes}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device="cpu"),
                                       constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    model = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                  lambda params: torch.optim.Adam(params, lr=1e-3))
    optimizer = CombinedOptimizer([model.fused_optimizer, dense])

    shard = distributed.ShardedData(train, rank, world_size)
    losses = []
    for epoch in range(1, args.epochs + 1):
        total, n = 0.0, 0
        for batch in shard.batches(args.batch, shuffle=True, seed=args.seed * 1000 + epoch):
            loss = F.binary_cross_entropy_with_logits(model(as_kjt(batch, FEATURES)), batch["label"])
            optimizer.zero_grad()
            loss.backward()                     # the tables are updated here, inside the backward pass
            optimizer.step()
            total, n = total + float(loss.detach()) * len(batch["label"]), n + len(batch["label"])
        losses.append(total / n)
    # every process scores its block of the test rows (the lookups are collective), rank 0 gets all
    block = range(*[min(len(test), r * -(-len(test) // world_size)) for r in (rank, rank + 1)])
    rows = test.subset(torch.arange(block.start, block.stop))
    pad = -(-len(test) // world_size) - len(rows)
    ids = {f: torch.cat([rows[f], torch.ones(pad, dtype=torch.long)]) for f in FEATURES}
    with torch.no_grad():
        p = torch.sigmoid(model(as_kjt(ids, FEATURES)))[: len(rows)].numpy()
    p = distributed.gather_rows(p, len(test), rank, world_size)
    if rank == 0:
        placed = {name: {"sharding_type": s.sharding_type, "ranks": s.ranks}
                  for module_plan in plan.plan.values() for name, s in module_plan.items()}
        Path(args.out).write_text(json.dumps({
            "world_size": world_size, "plan": placed, "train_loss": losses,
            **{f"test_{k}": v for k, v in metrics.compute(test["label"].numpy(), p, None,
                                                          ("auc", "logloss")).items()},
            "test_rows": len(test), "rows_per_table": sizes}, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

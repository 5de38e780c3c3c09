"""Data-parallel training: sharding as DistributedSampler, 2 processes under torchrun match one
process at the same global batch and seed, and a 2-process TorchRec table-wise sharded run."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from ctrlib import distributed
from ctrlib.data import TensorData


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3)])
def test_shards_are_distributed_samplers(n, world):
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        assert distributed.shard_positions(n, rank, world).tolist() == list(sampler)


def test_the_shares_of_a_step_are_the_single_process_batch():
    data = TensorData({"x": torch.arange(40), "label": torch.zeros(40)})
    alone = [b["x"] for b in data.batches(8, shuffle=True, seed=3)]
    shares = [list(distributed.ShardedData(data, r, 2).batches(8, shuffle=True, seed=3)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(alone) == distributed.ShardedData(data, 0, 2).num_batches(8)
    for k, batch in enumerate(alone):
        together = torch.cat([shares[0][k]["x"], shares[1][k]["x"]])
        assert sorted(together.tolist()) == sorted(batch.tolist())
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        next(distributed.ShardedData(data, 0, 2).batches(7))


# One run each; rows and global batch chosen so that no step is a padded partial batch (then the
# two runs take the same steps; the only difference is the order of the float sums in the all-reduce).
RUN = ["--rows", "3000", "--epochs", "2", "--batch", "200", "--users", "300", "--items", "600"]
TOLERANCE = 1e-5  # on test probabilities, after 2 epochs of 12 steps each


def test_two_processes_train_like_one(tmp_path):
    args = [*RUN, "--embedding-update", "sparse"]  # sparse row gradients: the sparse all-reduce path
    distributed.launch("ctrlib.examples.ddp_train", 0, *args, "--out", str(tmp_path / "one.json"))
    distributed.launch("ctrlib.examples.ddp_train", 2, *args, "--out", str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["train_rows"] % 200 == 0
    p1, p2 = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert np.abs(p1 - p2).max() <= TOLERANCE
    np.testing.assert_allclose(one["history"]["valid_auc"], two["history"]["valid_auc"], rtol=0, atol=1e-6)
    assert p1.std() > 1e-3  # trained: the predictions are not one constant


def test_two_processes_train_torchrec_sharded_tables(tmp_path):
    pytest.importorskip("torchrec")
    out = tmp_path / "tr.json"
    distributed.launch("ctrlib.examples.torchrec_tables", 2, "--out", str(out), "--rows", "4000", "--epochs", "2")
    run = json.loads(out.read_text())
    assert run["world_size"] == 2
    assert {s["sharding_type"] for s in run["plan"].values()} == {"table_wise"}
    assert all(len(s["ranks"]) == 1 for s in run["plan"].values())                  # each table whole on one rank
    assert {s["ranks"][0] for s in run["plan"].values()} == {0, 1}                   # both ranks hold tables
    assert run["train_loss"][-1] < run["train_loss"][0]
    assert run["test_auc"] > 0.55

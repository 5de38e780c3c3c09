"""Data-parallel training over several processes through the same :func:`ctrlib.fit`.

Run a training script with ``torchrun --nproc_per_node 2 train.py`` (gloo on CPU, nccl on GPU);
inside it, call :func:`init` once and train with :func:`fit` instead of ``ctrlib.fit``:

>>> rank, world = ctrlib.distributed.init()
>>> result = ctrlib.distributed.fit(model, train, valid, batch_size=1024)   # 1024 = the global batch

What each process does, per step (data parallelism, as ``DistributedDataParallel``):

* it reads its share of the global batch (:class:`ShardedData`, ``DistributedSampler``'s rule: every
  process draws the same permutation of the rows, padded to a multiple of the world size, and
  process r keeps positions r, r + W, r + 2W, ...; so the W shares of step k are exactly the
  single-process batch k of the same seed and global batch size);
* after ``backward`` the gradients are averaged across processes (:func:`average_gradients`, three
  collectives per step): the dense ones whole, the sparse row gradients of the tables
  (``embedding_update="sparse"``, the default: lazy Adam, i.e. ``torch.optim.SparseAdam``'s rule on
  the rows a step touches) as their touched rows only, not whole tables;
* every process takes the same optimiser step from the same weights (broadcast from rank 0 first).

Validation is sharded too (:func:`sharded_metrics`): each process scores 1/W of the rows, the
predictions are gathered, and every process computes the same metrics from all of them, so early
stopping agrees everywhere; only rank 0 needs to report them.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ctrlib import metrics as M
from ctrlib.data.tensors import TensorData
from ctrlib.optim import sum_duplicate_rows


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` in the
    environment); ``backend`` None: nccl when CUDA is available, else gloo. Returns ``(rank, world)``;
    ``(0, 1)`` outside ``torchrun``, so one script runs alone too."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":  # one GPU per process
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _comm_device() -> torch.device:
    """Where collectives run: nccl moves CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process, ``(0, 1)`` when not distributed."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard_positions(n: int, rank: int, world_size: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``DistributedSampler``'s share: rows ``perm`` (default 0..n-1) padded with its first rows to a
    multiple of ``world_size``, then every ``world_size``-th from ``rank``."""
    perm = torch.arange(n) if perm is None else perm
    padded = -(-n // world_size) * world_size
    if padded > n:
        perm = torch.cat([perm, perm[: padded - n]])
    return perm[rank::world_size]


class ShardedData(TensorData):
    """This process's share of ``data``: ``batches(global_batch, shuffle, seed)`` yields its
    ``global_batch / W`` rows of each global batch (see the module docstring), and the training
    loop averages gradients across processes after each ``backward`` (``sync_gradients``)."""

    def __init__(self, data: TensorData, rank: int, world_size: int):
        super().__init__(data.tensors)
        self.rank, self.world_size = rank, world_size

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | None = None, keys=None):
        if batch_size % self.world_size:
            raise ValueError(f"the global batch size {batch_size} must be a multiple of the {self.world_size} "
                             f"processes, so that every process reads the same number of rows per step")
        perm = None
        if shuffle:  # the permutation TensorData.batches draws for the same seed
            perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(0 if seed is None else seed))
        mine = shard_positions(len(self), self.rank, self.world_size, perm)
        keys = list(self.tensors) if keys is None else list(keys)
        tensors = {k: self.tensors[k][mine] for k in keys}
        step = batch_size // self.world_size
        for start in range(0, len(mine), step):
            yield {k: v[start:start + step] for k, v in tensors.items()}

    def num_batches(self, batch_size: int) -> int:
        return -(-len(shard_positions(len(self), self.rank, self.world_size)) // (batch_size // self.world_size))

    def sync_gradients(self, model: nn.Module) -> None:
        average_gradients(model, self.world_size)


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average every parameter's gradient across the processes, in three collectives per step
    whatever the number of tensors (each one is a synchronisation, the cost that dominates on a
    busy machine): the sizes of the sparse row gradients, then one all-gather of a float buffer
    (every dense gradient, then every sparse gradient's row values) and one of the row numbers.
    Each process sums what it gathered in rank order, so all hold the same average. A missing
    dense gradient counts as zero, so every process sends the same layout."""
    dense, sparse = [], []
    for p in model.parameters():
        if p.grad is not None and p.grad.is_sparse:
            sparse.append((p, p.grad.coalesce()))
        elif p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dense.append(p.grad)
    dev = _comm_device()
    nnz = torch.tensor([g._nnz() for _, g in sparse], dtype=torch.long, device=dev)  # [S]
    sizes = [torch.empty_like(nnz) for _ in range(world_size)]
    if sparse:
        dist.all_gather(sizes, nnz)
    width = [p.shape[1] for p, _ in sparse]
    n_dense = sum(g.numel() for g in dense)
    longest = max(int(sum(int(k) * w for k, w in zip(size, width))) for size in sizes) if sparse else 0
    values = torch.zeros(n_dense + longest, device=dev)
    if dense:
        values[:n_dense] = torch.cat([g.reshape(-1) for g in dense])
    rows = torch.zeros(max(int(size.sum()) for size in sizes) if sparse else 0, dtype=torch.long, device=dev)
    at, row_at = n_dense, 0
    for _, g in sparse:
        v = g._values().reshape(-1)
        values[at:at + len(v)], at = v, at + len(v)
        rows[row_at:row_at + g._nnz()], row_at = g._indices()[0], row_at + g._nnz()
    gathered = [torch.empty_like(values) for _ in range(world_size)]
    dist.all_gather(gathered, values)
    total = torch.stack([g[:n_dense] for g in gathered]).sum(0) / world_size      # dense: rank order
    for g, part in zip(dense, total.split([g.numel() for g in dense])):
        g.copy_(part.view_as(g))  # copy_ moves it back to the gradient's device
    if not sparse:
        return
    all_rows = [torch.empty_like(rows) for _ in range(world_size)]
    dist.all_gather(all_rows, rows)
    for j, (p, _) in enumerate(sparse):
        ids, vals = [], []
        for r in range(world_size):
            k = [int(x) for x in sizes[r]]
            v_at = n_dense + sum(k[i] * width[i] for i in range(j))
            r_at = sum(k[:j])
            ids.append(all_rows[r][r_at:r_at + k[j]])
            vals.append(gathered[r][v_at:v_at + k[j] * width[j]].view(k[j], width[j]))
        summed = torch.sparse_coo_tensor(torch.cat(ids).unsqueeze(0), torch.cat(vals), p.shape,
                                         check_invariants=False).to(p.device)
        p.grad = sum_duplicate_rows(summed) / world_size    # the union of the touched rows, summed


def broadcast_parameters(model: nn.Module) -> None:
    """Every process starts from rank 0's weights (and buffers)."""
    dev = _comm_device()
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            sent = t.to(dev)
            dist.broadcast(sent, 0)
            t.copy_(sent)


def gather_rows(values: np.ndarray, n: int, rank: int, world_size: int) -> np.ndarray:
    """Each process's ``values`` for its contiguous block of ``n`` rows (:func:`_block`), concatenated in
    row order on every process."""
    local = torch.from_numpy(np.ascontiguousarray(values))
    size = -(-n // world_size)
    padded = torch.zeros(size, *local.shape[1:], dtype=local.dtype, device=_comm_device())
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: len(_block(n, r, world_size))] for r, part in enumerate(parts)]).cpu().numpy()


def _block(n: int, rank: int, world_size: int) -> range:
    size = -(-n // world_size)
    return range(min(rank * size, n), min((rank + 1) * size, n))


def sharded_metrics(valid: TensorData, metrics=("auc", "logloss"), group: str = "user_id",
                    batch_size: int = 16_384):
    """A ``valid`` callable for ``fit``: this process predicts its block of ``valid``'s rows, the
    predictions are gathered, and every process computes ``metrics`` over all rows (the numbers
    ``ctrlib.evaluate`` gives on one process)."""
    from ctrlib.train import _label_names, predict

    def score(model: nn.Module) -> dict[str, float]:
        rank, world_size = world()
        rows = _block(len(valid), rank, world_size)
        label = _label_names(model)[0]
        local = predict(model, valid.subset(torch.arange(rows.start, rows.stop)), batch_size) if len(rows) \
            else np.zeros(0, np.float32)
        p = gather_rows(local, len(valid), rank, world_size) if world_size > 1 else local
        groups = valid[group].numpy() if "gauc" in metrics else None
        return M.compute(valid[label].numpy(), p, groups, metrics)
    return score


def fit(model: nn.Module, train: TensorData, valid: TensorData | None = None, config=None, **overrides):
    """:func:`ctrlib.fit` on this process's share of ``train`` with gradients averaged across the
    processes; ``batch_size`` is the global batch (``W`` x the rows each process reads per step).
    Outside ``torchrun`` (one process) it is ``ctrlib.fit`` itself."""
    from ctrlib.train import TrainConfig
    from ctrlib.train import fit as fit_one
    rank, world_size = world()
    if world_size == 1:
        return fit_one(model, train, valid, config, **overrides)
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    broadcast_parameters(model)
    wanted = ("auc", "logloss", "gauc") if cfg.monitor == "gauc" else ("auc", "logloss")
    score = valid if valid is None or callable(valid) else sharded_metrics(valid, wanted, cfg.group,
                                                                           cfg.eval_batch_size)
    return fit_one(model, ShardedData(train, rank, world_size), score, cfg)


def launch(module: str, nprocs: int, *args: str, timeout: float = 600, threads: int = 1):
    """Run ``python -m <module> args`` in ``nprocs`` local processes under ``torchrun`` (``--standalone``:
    a free local port), each with ``threads`` intra-op threads; ``nprocs=0`` runs it once, without
    ``torchrun``. Returns the ``CompletedProcess``; a failure raises with the processes' last output."""
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nprocs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}",
               "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done

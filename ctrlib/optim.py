"""Row-wise (sparse) embedding updates: lazy Adam, the L2 on the rows a batch touches, sparse-aware clipping.

A training step of a CTR model touches a few thousand rows of tables that may hold millions. With
sparse row gradients (:func:`ctrlib.layers.sparse_row_gradients`) the optimiser reads and writes
only those rows, so a step costs O(rows touched x D), not O(table rows x D).
"""
from __future__ import annotations

import torch


def sum_duplicate_rows(grad: torch.Tensor) -> torch.Tensor:
    """A sparse row gradient ``[V, D]`` with each row listed once (duplicates summed, rows ascending).

    The same tensor as ``grad.coalesce()``, built without ``coalesce`` (slower here on CPU): for a
    table of at most 4N rows (N looked-up entries) one ``index_add`` into a zero ``[V, D]`` table and
    the touched rows read back from it, otherwise one sort of the row numbers and an ``index_add``
    into ``[U, D]``. Both add each row's entries in their original order: the same numbers."""
    if grad.is_coalesced():
        return grad
    ids, values = grad._indices()[0], grad._values()                       # [N], [N, D]
    if grad.shape[0] <= 4 * len(ids):  # a small table: O(V) scatter instead of an O(N log N) sort
        summed = values.new_zeros(grad.shape[0], values.shape[1]).index_add_(0, ids, values)  # [V, D]
        touched = torch.zeros(grad.shape[0], dtype=torch.bool, device=ids.device).index_fill_(0, ids, True)
        rows = touched.nonzero().squeeze(1)                                # [U], ascending
        return torch.sparse_coo_tensor(rows.unsqueeze(0), summed.index_select(0, rows), grad.shape,
                                       is_coalesced=True, check_invariants=False)
    sorted_ids, order = torch.sort(ids)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]                          # a new row starts here
    rows = sorted_ids[first]                                               # [U]
    slot = torch.empty_like(ids)
    slot[order] = first.cumsum(0) - 1                                      # row slot of every entry
    summed = values.new_zeros(len(rows), values.shape[1]).index_add_(0, slot, values)  # [U, D]
    return torch.sparse_coo_tensor(rows.unsqueeze(0), summed, grad.shape, is_coalesced=True,
                                   check_invariants=False)


def prepare_table_grads(tables, l2: float = 0.0, dense: bool = False) -> float:
    """After ``backward``: each table's sparse row gradient with its rows summed once, plus the
    gradient of the embedding L2 on the rows the batch touched,

        lambda/2 * sum_{r touched} ||E_r||^2      (gradient lambda * E_r on those rows only),

    and, with ``dense=True``, scattered into a full-table gradient (for dense Adam). Returns the
    penalty's value (for the reported loss). A table whose gradient is already dense (a lookup
    outside :func:`ctrlib.layers.lookup_rows`) counts as touched everywhere."""
    penalty = 0.0
    for table in tables:
        grad = table.grad
        if grad is None:
            continue
        if grad.is_sparse:
            grad = sum_duplicate_rows(grad)
            if l2:
                rows, values = grad._indices()[0], grad._values()
                touched = table.detach().index_select(0, rows)             # [U, D]
                penalty += l2 / 2 * float(touched.pow(2).sum())
                values.add_(touched, alpha=l2)
            table.grad = grad.to_dense() if dense else grad
        elif l2:
            penalty += l2 / 2 * float(table.detach().pow(2).sum())
            grad.add_(table.detach(), alpha=l2)
    return penalty


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (same norm, same scale factor) that also takes coalesced sparse
    row gradients: their norm is the norm of their values, and their values are scaled."""
    grads = []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse and not p.grad.is_coalesced():
            raise ValueError("clip_grad_norm needs coalesced sparse gradients: call prepare_table_grads first")
        grads.append(p.grad._values() if p.grad.is_sparse else p.grad)
    if not grads:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm(grads)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    return total


class LazyAdam(torch.optim.Adam):
    """Adam for dense gradients; lazy (row-wise) Adam for sparse row gradients.

    A parameter with a dense gradient gets ``torch.optim.Adam``'s step (L2 ``weight_decay`` as Adam's).
    A table with a sparse row gradient ``g`` (``[V, D]``, rows ``R`` touched this step) gets, with
    ``t`` the number of steps this table has taken (its own step count, as in
    ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam; the bias correction uses it for every row):

        for r in R:   m_r <- b1 m_r + (1 - b1) g_r
                      v_r <- b2 v_r + (1 - b2) g_r^2
                      E_r <- E_r - lr * (m_r / (1 - b1^t)) / (sqrt(v_r / (1 - b2^t)) + eps)
        for r not in R:  E_r, m_r, v_r unchanged.

    Dense Adam also moves the untouched rows (``g_r = 0``: ``m_r`` decays and ``E_r`` keeps moving along
    it); lazy Adam does not, so it reads and writes only the touched rows. On a step that touches
    every row the two are the same update, computed with the same floating-point operations as
    ``torch.optim.Adam``'s CPU (single-tensor) path. The state (``step``, ``exp_avg``,
    ``exp_avg_sq``) has Adam's layout, so a table may alternate between sparse and dense gradients.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
        self.row_lr_scale: dict[int, torch.Tensor] = {}  # id(table) -> [V] factor on each row's lr
        self._workspace: dict[int, torch.Tensor] = {}    # id(table) -> [4, capacity, D] reused row buffers

    def scale_row_lr(self, table: torch.Tensor, start: int, stop: int, factor: float) -> None:
        """Rows ``start:stop`` of ``table`` step with ``factor`` x the lr (row-wise steps only): one
        embedding table inside a shared parameter gets its own lr, e.g. a transferred table."""
        scale = self.row_lr_scale.setdefault(id(table), torch.ones(len(table), dtype=table.dtype, device=table.device))
        scale[start:stop] = factor

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hidden = []  # sparse gradients, hidden from Adam's dense step and put back after it
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = sum_duplicate_rows(p.grad)
                    self._row_step(p, group)
                    hidden.append((p, p.grad))
                    p.grad = None
        try:
            super().step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        return loss

    def _row_buffers(self, p: torch.Tensor, n: int) -> torch.Tensor:
        """Four ``[n, D]`` buffers for a row step, reused from step to step. The number of touched rows
        changes every step; fresh temporaries of a new size each time kept glibc's heap growing and
        trimming (page faults), which cost the sparse path ~6% in the first ~100 steps of a process."""
        buffers = self._workspace.get(id(p))
        if buffers is None or buffers.shape[1] < n:
            capacity = min(len(p), max(n, int(1.25 * n)))
            buffers = p.new_empty(4, capacity, *p.shape[1:])
            self._workspace[id(p)] = buffers
        return buffers[:, :n]

    def _row_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:  # Adam's state layout
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        rows, g = p.grad._indices()[0], p.grad._values()                    # [U], [U, D]
        beta1, beta2 = group["betas"]
        lr, eps = float(group["lr"]), group["eps"]
        if group["weight_decay"]:
            g = g.add(p.index_select(0, rows), alpha=group["weight_decay"])
        state["step"] += 1
        step = state["step"].item()
        # the operations of torch.optim.adam._single_tensor_adam, on the touched rows (in reused buffers)
        buf = self._row_buffers(p, len(rows))                              # [4, U, D]
        m = torch.index_select(state["exp_avg"], 0, rows, out=buf[0]).lerp_(g, 1 - beta1)
        v = torch.index_select(state["exp_avg_sq"], 0, rows, out=buf[1]).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = torch.sqrt(v, out=buf[2]).div_(bias_correction2_sqrt).add_(eps)
        scale = self.row_lr_scale.get(id(p))
        step_m = m if scale is None else m * scale.index_select(0, rows).unsqueeze(1)   # [U, D]
        e = torch.index_select(p, 0, rows, out=buf[3]).addcdiv_(step_m, denom, value=-lr / bias_correction1)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        p.index_copy_(0, rows, e)

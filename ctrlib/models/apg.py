"""APG: Adaptive Parameter Generation network (Yan et al., NeurIPS 2022).

A regular layer ``h' = act(h W + b)`` uses one ``W`` for every instance. APG gives each instance i
its own weights, generated from a *condition* vector ``z_i``:

    W_i = U S_i V,   S_i = reshape(G(z_i)) in R^{K x K}          (low rank, K << N, M)
    h'_i = act( ((h_i U) S_i) V + b_i )                           (decomposed feed-forward)

``U [N, K]`` and ``V [K, M]`` are *shared* by all instances (common patterns); only the small core
``S_i`` (and the bias ``b_i``) is *specific* (custom patterns). The forward order ((h U) S_i) V
never builds the ``[B, N, M]`` tensor of the W_i. For training, ``U = U_l U_r`` and ``V = V_l V_r``
with inner width ``P >= K`` (over-parameterisation); :meth:`APGLinear.merge_` multiplies the
factors out once, so inference pays nothing for them.

Conditions (``APGMLP``): *group-wise* / *mix-wise*: ``z_i`` is the concatenation of the embeddings
of one / several condition features (e.g. a user-group id); *self-wise*: ``z_i = h_i``, the layer's
own input (then APG-MLP is a pure drop-in for ``MLP``).

Reference implementation: FuxiCTR ``model_zoo/APG`` (``APG_Linear``, ``APG_MLP``). Our choices,
not the paper's: the generator starts at ``S_i = I`` (its output bias is the flattened identity),
and ``share_uv=False`` (the "no parameter sharing" ablation) generates U_i and V_i as well.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ctrlib.layers import EmbeddingTable


def _hypernet_body(in_dim: int, hidden) -> tuple[nn.Sequential, int]:
    """The generator G's hidden part: Linear -> ReLU per hidden layer (no BatchNorm); empty = identity."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers), in_dim


class _RowTimesMatrix(torch.autograd.Function):
    """``out[b] = h[b] @ mats[b]``: each instance's row vector times its own matrix, ``[B, n] x
    [B, n, m] -> [B, m]``. Same numbers as ``bmm``; the only change is the backward pass, whose
    weight gradient ``h[b]^T g[b]`` is an outer product: on CPU a broadcast multiply is several
    times faster than the batched GEMM with inner size 1 that autograd's bmm backward runs."""

    @staticmethod
    def forward(ctx, h, mats):
        ctx.save_for_backward(h, mats)
        return torch.bmm(h.unsqueeze(1), mats).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        h, mats = ctx.saved_tensors
        grad_h = torch.bmm(mats, grad.unsqueeze(2)).squeeze(2) if ctx.needs_input_grad[0] else None
        grad_mats = h.unsqueeze(2) * grad.unsqueeze(1) if ctx.needs_input_grad[1] else None
        return grad_h, grad_mats


def per_instance(h: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """``[B, n] x [B, n, m] -> [B, m]``: row b of ``h`` times matrix b of ``mats``."""
    return _RowTimesMatrix.apply(h, mats)


class APGLinear(nn.Module):
    """One APG layer ``[B, N] -> [B, M]`` whose weights are generated from a condition ``z [B, d]``.

    Args:
        rank: K, the size of the generated core S_i. ``None``: *basic* APG, the generator emits the
            full ``N x M`` matrix W_i (the expensive baseline of the efficiency ladder).
        overparam: P >= K: train U = U_l U_r and V = V_l V_r (``None``: plain U, V).
        share_uv: True (APG): U, V shared, only S_i generated. False: U_i, S_i, V_i all generated.
        generate_bias: the bias b_i is generated too (else one static bias).
        hypernet_hidden: hidden widths of the generator G (``()`` = one linear map, as in BARS).
    """

    def __init__(self, in_dim: int, out_dim: int, condition_dim: int, rank: int | None = 8,
                 overparam: int | None = None, share_uv: bool = True, generate_bias: bool = True,
                 hypernet_hidden=()):
        super().__init__()
        if overparam is not None and (rank is None or overparam < rank):
            raise ValueError(f"overparam (P={overparam}) needs a rank K <= P, got K={rank}")
        if rank is None and not share_uv:
            raise ValueError("share_uv=False needs a rank K (basic APG generates the whole W_i already)")
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank
        self.share_uv, self.generate_bias = share_uv, generate_bias
        N, M, K = in_dim, out_dim, rank
        # What G emits per instance, in this order: [U_i] [S_i or W_i] [V_i] [b_i].
        self.sizes = {}
        if K is None:
            self.sizes["W"] = N * M
        else:
            if not share_uv:
                self.sizes["U"] = N * K
            self.sizes["S"] = K * K
            if not share_uv:
                self.sizes["V"] = K * M
        if generate_bias:
            self.sizes["b"] = M
        # G = a shared body, then one linear head per generated block: the same map as one output
        # layer of sum(sizes) units, but each block comes out contiguous (no split-and-copy).
        self.hypernet, width = _hypernet_body(condition_dim, hypernet_hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(width, size) for name, size in self.sizes.items()})
        self.bias = None if generate_bias else nn.Parameter(torch.zeros(M))
        # Shared factors, xavier-normal initialised as in FuxiCTR.
        self.U = self.U_l = self.U_r = self.V = self.V_l = self.V_r = None
        if K is not None and share_uv:
            if overparam is None:
                self.U, self.V = self._xavier(N, K), self._xavier(K, M)
            else:
                self.U_l, self.U_r = self._xavier(N, overparam), self._xavier(overparam, K)
                self.V_l, self.V_r = self._xavier(K, overparam), self._xavier(overparam, M)
        self._init_generator_output()

    @staticmethod
    def _xavier(rows: int, cols: int) -> nn.Parameter:
        return nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, cols)))

    @torch.no_grad()
    def _init_generator_output(self) -> None:
        """Start every generated block at a sensible value, whatever z is: S_i = I, W_i / U_i / V_i
        = a xavier draw (the same for all instances), b_i = 0; G's output weights start small."""
        N, M, K = self.in_dim, self.out_dim, self.rank
        for name, head in self.heads.items():
            nn.init.normal_(head.weight, std=0.01)
            block = head.bias
            if name == "S":
                block.copy_(torch.eye(K).flatten())
            elif name == "W":
                block.copy_(nn.init.xavier_normal_(torch.empty(N, M)).flatten())
            elif name == "U":
                block.copy_(nn.init.xavier_normal_(torch.empty(N, K)).flatten())
            elif name == "V":
                block.copy_(nn.init.xavier_normal_(torch.empty(K, M)).flatten())
            else:
                block.zero_()

    @property
    def overparameterised(self) -> bool:
        return self.U_l is not None

    def shared_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared ``U [N, K]`` and ``V [K, M]`` (products of the factors when over-parameterised)."""
        if self.overparameterised:
            return self.U_l @ self.U_r, self.V_l @ self.V_r
        return self.U, self.V

    @torch.no_grad()
    def merge_(self) -> APGLinear:
        """Multiply the over-parameterisation factors out into plain U, V (in place): same outputs,
        fewer parameters and no per-batch products at inference."""
        if self.overparameterised:
            U, V = self.shared_factors()
            self.U, self.V = nn.Parameter(U.clone()), nn.Parameter(V.clone())
            self.U_l = self.U_r = self.V_l = self.V_r = None
        return self

    def generate(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The instance-specific blocks for conditions ``z [B, d]``: S ``[B, K, K]`` (or W ``[B, N, M]``),
        U ``[B, N, K]``, V ``[B, K, M]`` when not shared, b ``[B, M]``."""
        hidden = self.hypernet(z)  # [B, width]
        shapes = {"W": (self.in_dim, self.out_dim), "U": (self.in_dim, self.rank), "S": (self.rank, self.rank),
                  "V": (self.rank, self.out_dim), "b": (self.out_dim,)}
        return {k: head(hidden).view(len(z), *shapes[k]) for k, head in self.heads.items()}

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x [B, N]``, ``z [B, d]`` -> ``[B, M]`` in the decomposed order, never forming W_i."""
        g = self.generate(z)
        if self.rank is None:  # basic APG: the generator made the whole W_i
            h = per_instance(x, g["W"])  # [B, M]
        elif self.share_uv:
            U, V = self.shared_factors()
            h = per_instance(x @ U, g["S"]) @ V  # [B, K] -> [B, K] -> [B, M]
        else:
            h = per_instance(per_instance(per_instance(x, g["U"]), g["S"]), g["V"])
        return h + (g["b"] if self.generate_bias else self.bias)

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """The full per-instance weights ``W_i = U_i S_i V_i``, ``[B, N, M]`` (for checks and the
        naive baseline: this is exactly the tensor the decomposed forward avoids)."""
        g = self.generate(z)
        if self.rank is None:
            return g["W"]
        if self.share_uv:
            U, V = self.shared_factors()
            return U @ g["S"] @ V  # [N,K] @ [B,K,K] @ [K,M] -> [B, N, M]
        return g["U"] @ g["S"] @ g["V"]

    def forward_naive(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The same layer computed the naive way: materialise W_i, then ``h W_i + b_i``."""
        b = self.generate(z)["b"] if self.generate_bias else self.bias
        return torch.bmm(x.unsqueeze(1), self.weights(z)).squeeze(1) + b


class APGMLP(nn.Module):
    """``MLP`` with every hidden ``Linear`` replaced by an :class:`APGLinear`:
    APGLinear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then a *static* output
    ``Linear`` (as in FuxiCTR's ``APG_MLP``).

    ``condition_dim=None`` is self-wise (each layer is conditioned on its own input, call
    ``mlp(x)``); otherwise call ``mlp(x, z)`` with the condition ``z [B, condition_dim]``.
    ``rank`` and ``overparam`` may be one value or one per hidden layer.
    """

    def __init__(self, in_dim: int, hidden=(400, 400, 400), out_dim: int | None = 1, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.ReLU, batch_norm: bool = False, *,
                 condition_dim: int | None = None, rank=8, overparam=None, share_uv: bool = True,
                 generate_bias: bool = True, hypernet_hidden=()):
        super().__init__()
        hidden = list(hidden)
        ranks = list(rank) if isinstance(rank, (list, tuple)) else [rank] * len(hidden)
        ps = list(overparam) if isinstance(overparam, (list, tuple)) else [overparam] * len(hidden)
        self.self_wise = condition_dim is None
        self.layers = nn.ModuleList()
        self.post = nn.ModuleList()  # BN / activation / dropout after each APG layer
        for h, k, p in zip(hidden, ranks, ps):
            cond = in_dim if self.self_wise else condition_dim
            self.layers.append(APGLinear(in_dim, h, cond, k, p, share_uv, generate_bias, hypernet_hidden))
            post = ([nn.BatchNorm1d(h)] if batch_norm else []) + [activation()] + \
                   ([nn.Dropout(dropout)] if dropout else [])
            self.post.append(nn.Sequential(*post))
            in_dim = h
        self.head = None
        if out_dim is not None:
            self.head = nn.Linear(in_dim, out_dim)
            nn.init.xavier_normal_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.out_dim = out_dim if out_dim is not None else in_dim

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if not self.self_wise and z is None:
            raise ValueError("this APG-MLP is group-/mix-wise: pass the condition z [B, condition_dim]")
        for layer, post in zip(self.layers, self.post):
            x = post(layer(x, x if self.self_wise else z))
        return self.head(x) if self.head is not None else x

    @classmethod
    def from_mlp(cls, mlp: nn.Module, condition_dim: int | None = None, **apg) -> APGMLP:
        """An APG-MLP with the shape of an existing MLP (``ctrlib.layers.MLP``, ``ActivationMLP``, or
        any module whose ``net`` is a Sequential of Linear layers and per-layer modules): each hidden
        Linear becomes an APGLinear of the same width, the modules after it (BatchNorm, ReLU, Dice,
        Dropout, ...) are kept, and a final Linear stays the static output layer."""
        modules = list(mlp.net)
        starts = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
        has_out = bool(starts) and starts[-1] == len(modules) - 1
        hidden_starts = starts[:-1] if has_out else starts
        if not hidden_starts:
            raise ValueError("the MLP has no hidden Linear layer to replace")
        first = modules[hidden_starts[0]]
        new = cls(first.in_features, [modules[i].out_features for i in hidden_starts],
                  modules[-1].out_features if has_out else None, condition_dim=condition_dim, **apg)
        ends = hidden_starts[1:] + [starts[-1] if has_out else len(modules)]
        new.post = nn.ModuleList(nn.Sequential(*modules[a + 1:b]) for a, b in zip(hidden_starts, ends))
        if has_out:
            new.head = modules[-1]
        return new

    def merge_(self) -> APGMLP:
        """Merge every layer's over-parameterisation factors (see :meth:`APGLinear.merge_`)."""
        for layer in self.layers:
            layer.merge_()
        return self


# ---------------------------------------------------------------------------------------------
# Wrapping a base model: swap its MLP for an APG-MLP of the same shape.
# ---------------------------------------------------------------------------------------------

class _ConditionedMLP(nn.Module):
    """Stands where the base model's MLP stood and is called the same way, ``mlp(x)``; the
    wrapping :class:`APG` model hands it the batch's condition just before the base forward."""

    def __init__(self, apg_mlp: APGMLP):
        super().__init__()
        self.apg = apg_mlp
        self.z: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apg(x, self.z)


class APG(nn.Module):
    """A base CTR model with its MLP (attribute ``mlp_attr``) replaced by an APG-MLP of the same
    widths: ``APG(DeepFM(schema), condition_features=("scenario",))``. Embeddings and explicit
    interaction parts (FM, cross network, attention) stay static, as in the paper.

    condition_features: the features whose embeddings, concatenated, form z_i: one feature is
        group-wise, several mix-wise, ``()`` self-wise.
    condition_dim: size of each condition feature's embedding in a *separate* condition table
        (FuxiCTR's ``new_condition_emb``), initialised N(0, ``condition_init_std``). ``None`` looks the
        conditions up in the base model's own embedding table instead (FuxiCTR's default); with
        the book's tiny N(0, 1e-4) embedding init the generator then barely sees the condition
        early in training, which is why the separate table is our default.
    """

    def __init__(self, base: nn.Module, condition_features=("scenario",), mlp_attr: str = "mlp",
                 rank=8, overparam=None, share_uv: bool = True, generate_bias: bool = True, hypernet_hidden=(),
                 condition_dim: int | None = 8, condition_init_std: float = 1.0):
        super().__init__()
        mlp = getattr(base, mlp_attr)
        if not isinstance(getattr(mlp, "net", None), nn.Sequential):
            raise TypeError(f"base.{mlp_attr} is a {type(mlp).__name__}, not an MLP with a .net Sequential")
        self.condition_features = tuple(condition_features)
        features = [base.schema[name] for name in self.condition_features]  # KeyError for an unknown one
        self.condition_tables = None
        if condition_dim is not None and features:
            self.condition_tables = nn.ModuleDict({f.name: EmbeddingTable(f.vocab_size, condition_dim)
                                                   for f in features})
            for table in self.condition_tables.values():
                nn.init.normal_(table.weight, std=condition_init_std)
        per_feature = condition_dim if condition_dim is not None else self._table().dim
        cond_dim = len(self.condition_features) * per_feature if self.condition_features else None
        apg_mlp = APGMLP.from_mlp(mlp, cond_dim, rank=rank, overparam=overparam, share_uv=share_uv,
                                  generate_bias=generate_bias, hypernet_hidden=hypernet_hidden)
        self.base, self.mlp_attr = base, mlp_attr
        setattr(base, mlp_attr, _ConditionedMLP(apg_mlp))  # registered once, inside the base model
        self.schema = base.schema

    @property
    def apg_mlp(self) -> APGMLP:
        return getattr(self.base, self.mlp_attr).apg

    def condition(self, batch) -> torch.Tensor | None:
        """z_i ``[B, n_features * D]``: the condition features' embeddings, concatenated."""
        if not self.condition_features:
            return None
        if self.condition_tables is not None:
            return torch.cat([self.condition_tables[n](batch[n]) for n in self.condition_features], dim=1)
        emb = self._table()
        return torch.cat([emb.lookup(n, batch[n]) for n in self.condition_features], dim=1)

    def _table(self):
        """The base model's FeatureEmbedding (DIN keeps it one level down, as ``embedding.table``)."""
        emb = self.base.embedding
        return getattr(emb, "table", emb)

    def forward(self, batch):
        slot = getattr(self.base, self.mlp_attr)
        slot.z = self.condition(batch)
        try:
            return self.base(batch)
        finally:
            slot.z = None  # never keep a batch's tensors alive between calls

    def merge_(self) -> APG:
        self.apg_mlp.merge_()
        return self


# ---------------------------------------------------------------------------------------------
# Measuring cost: regular layer vs naive APG vs decomposed APG (used by the chapter and
# benchmarks/bench_apg.py).
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_native_output():
    """Silence what C++ writes to file descriptors 1 and 2 (the profiler's start/stop lines and
    its allocator warning), so notebooks stay readable; Python-level output is untouched."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def peak_memory_mib(fn) -> float:
    """Peak of live tensor memory allocated on the CPU while ``fn()`` runs, in MiB.

    Measured with the PyTorch profiler (``profile_memory=True``): every allocation and free is
    recorded with its time; the running sum over time, started at 0, peaks at the answer. It
    counts tensors only (not Python objects or the allocator's cached pages), and only what is
    allocated inside ``fn`` (parameters and inputs that exist before are not counted).
    """
    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = np.cumsum([e.self_cpu_memory_usage for e in events]) if events else np.zeros(1)
    return float(max(live.max(), 0.0)) / 2 ** 20


def median_ms(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds (after ``warmup`` calls)."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class _Regular(nn.Module):
    """A regular layer with the APG layer's call signature (the condition is ignored)."""

    def __init__(self, n: int, m: int):
        super().__init__()
        self.linear = nn.Linear(n, m)

    def forward(self, x, z):
        return self.linear(x)


class _Materialised(nn.Module):
    """An APG layer run the naive way: W_i built as a ``[B, N, M]`` tensor, then ``h W_i + b_i``."""

    def __init__(self, layer: APGLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x, z):
        return self.layer.forward_naive(x, z)


def layer_variants(n: int, m: int, condition_dim: int = 16, rank: int = 8, overparam: int | None = None):
    """The layers of the efficiency comparison, all ``[B, n] -> [B, m]`` given ``(x, z)``:
    ``regular`` (nn.Linear), ``naive`` (basic APG: the generator emits the whole W_i),
    ``low-rank, W materialised`` (W_i = U S_i V formed, then multiplied) and ``decomposed``
    (APG as used: ((h U) S_i) V with U, V shared)."""
    return {
        "regular": _Regular(n, m),
        "naive": _Materialised(APGLinear(n, m, condition_dim, rank=None)),
        "low-rank, W materialised": _Materialised(APGLinear(n, m, condition_dim, rank=rank, overparam=overparam)),
        "decomposed": APGLinear(n, m, condition_dim, rank=rank, overparam=overparam),
    }


def measure_layers(widths=(64, 256), batch_sizes=(256, 1024), condition_dim: int = 16, rank: int = 8,
                   repeats: int = 5, variants=None, seed: int = 0):
    """One row per (variant, width, batch size): parameters, train step ms (forward + backward),
    inference ms (eval, no grad), and peak MiB of a train step and of inference (see
    :func:`peak_memory_mib`). Widths are N = M. Times are medians of ``repeats``; all variants of
    one setting are measured in the same run, one after the other, so their ratios compare like
    with like."""
    import pandas as pd

    rows = []
    for width in widths:
        torch.manual_seed(seed)
        layers = layer_variants(width, width, condition_dim, rank)
        names = list(layers) if variants is None else list(variants)
        for batch in batch_sizes:
            x, z = torch.randn(batch, width), torch.randn(batch, condition_dim)
            for name in names:
                layer = layers[name]
                params = [p for p in layer.parameters()]

                def train_step(layer=layer, params=params, x=x, z=z):
                    for p in params:
                        p.grad = None
                    layer(x, z).square().mean().backward()

                def infer(layer=layer, x=x, z=z):
                    with torch.no_grad():
                        layer(x, z)

                layer.train()
                train_step()  # warm-up, and the .grad tensors of the first step
                train_ms = median_ms(train_step, repeats)
                train_mib = peak_memory_mib(train_step)
                layer.eval()
                infer_ms = median_ms(infer, repeats)
                infer_mib = peak_memory_mib(infer)
                rows.append({"variant": name, "width": width, "batch": batch,
                             "params": sum(p.numel() for p in params), "train_ms": train_ms,
                             "infer_ms": infer_ms, "train_peak_mib": train_mib, "infer_peak_mib": infer_mib})
    return pd.DataFrame(rows)

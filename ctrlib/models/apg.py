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

Wrapping a base model (``APG``): by composition, as FuxiCTR's ``APG_DeepFM``, whose forward calls
``self.mlp(h, condition)``: APG keeps the base model (DeepFM, DCN or DIN) as it is, calls its
embedding and interaction parts, and its own APG-MLP in place of the base MLP. ``ConditionInMLP``
is the simplest static alternative: the same condition embedding fed into a static MLP.

Reference implementation: FuxiCTR ``model_zoo/APG`` (``APG_Linear``, ``APG_MLP``). Our choices,
not the paper's: the generator starts at ``S_i = I`` (its output bias is the flattened identity),
and ``share_uv=False`` (the "no parameter sharing" ablation) generates U_i and V_i as well.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ctrlib.layers import EmbeddingTable, fm_interaction
from ctrlib.models.dcn import DCN
from ctrlib.models.deepfm import DeepFM
from ctrlib.models.din import DIN


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


def _mlp_layout(mlp: nn.Module) -> tuple[list[int], bool]:
    """Where the hidden Linear layers of ``mlp.net`` are, and whether it ends with an output Linear."""
    net = getattr(mlp, "net", None)
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"expected an MLP with a .net Sequential, got a {type(mlp).__name__}")
    starts = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    has_out = bool(starts) and starts[-1] == len(net) - 1
    hidden_starts = starts[:-1] if has_out else starts
    if not hidden_starts:
        raise ValueError("the MLP has no hidden Linear layer to replace")
    return hidden_starts, has_out


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
        Linear becomes an APGLinear of the same width, copies of the modules after it (BatchNorm,
        ReLU, Dice, Dropout, ...) are kept, and a copy of a final Linear is the static output layer.
        ``mlp`` itself is not changed."""
        hidden_starts, has_out = _mlp_layout(mlp)
        modules = list(mlp.net)
        first = modules[hidden_starts[0]]
        new = cls(first.in_features, [modules[i].out_features for i in hidden_starts],
                  modules[-1].out_features if has_out else None, condition_dim=condition_dim, **apg)
        ends = hidden_starts[1:] + [len(modules) - 1 if has_out else len(modules)]
        new.post = nn.ModuleList(copy.deepcopy(nn.Sequential(*modules[a + 1:b]))
                                 for a, b in zip(hidden_starts, ends))
        if has_out:
            new.head = copy.deepcopy(modules[-1])
        return new

    def merge_(self) -> APGMLP:
        """Merge every layer's over-parameterisation factors (see :meth:`APGLinear.merge_`)."""
        for layer in self.layers:
            layer.merge_()
        return self


# ---------------------------------------------------------------------------------------------
# A base model with a conditioned MLP, by composition: the base model is used as it is.
# ---------------------------------------------------------------------------------------------

def _deepfm_logit(base: DeepFM, batch, mlp) -> torch.Tensor:
    """DeepFM's forward (eq. 1 of its paper) with ``mlp`` in place of ``base.mlp``."""
    e = base.embedding(batch)  # [B, F, D]
    logit = mlp(e.flatten(1)).squeeze(-1)  # [B]
    if base.use_fm:
        logit = logit + base.linear(batch) + fm_interaction(e)
    return logit


def _dcn_logit(base: DCN, batch, mlp) -> torch.Tensor:
    """DCN's forward with ``mlp`` in place of ``base.mlp`` (a hidden-only MLP: no output layer)."""
    x0 = base.embedding(batch).flatten(1)  # [B, F*D]
    x = base.cross(x0)  # [B, F*D]
    h = mlp(x) if base.structure == "stacked" else torch.cat([x, mlp(x0)], dim=1)
    return base.head(h).squeeze(-1)  # [B]


def _din_logit(base: DIN, batch, mlp) -> torch.Tensor:
    """DIN's forward with ``mlp`` in place of ``base.mlp``."""
    fields, query, keys, mask = base.embedding(batch)  # [B, F, D], [B, d], [B, L, d], [B, L]
    pooled, _ = base.pool(query, keys, mask)  # [B, d]
    return mlp(torch.cat([fields.flatten(1), pooled], dim=1)).squeeze(-1)  # [B]


_LOGITS = {DeepFM: _deepfm_logit, DCN: _dcn_logit, DIN: _din_logit}


class _Conditioned(nn.Module):
    """A base model whose MLP is replaced, in this module's forward only, by one that also reads a
    condition ``z_i``. The base model passed in is kept as ``self.base`` and never changed: its
    embedding and explicit interaction parts (FM, cross network, attention) are called as they are,
    its own MLP is not called (it stays in ``self.base``, unused, and gets no gradient).

    condition_features: the features whose embeddings, concatenated, form z_i.
    condition_dim: size of each condition feature's embedding in a *separate* condition table
        (FuxiCTR's ``new_condition_emb``), initialised N(0, ``condition_init_std``). ``None`` looks the
        conditions up in the base model's own embedding table instead (FuxiCTR's default); with
        the book's tiny N(0, 1e-4) embedding init the condition is then nearly zero early in
        training, which is why the separate table is our default.
    """

    def __init__(self, base: nn.Module, condition_features, mlp_attr: str, condition_dim: int | None,
                 condition_init_std: float):
        super().__init__()
        kind = next((k for k in _LOGITS if isinstance(base, k)), None)
        if kind is None:
            raise TypeError(f"{type(self).__name__} wraps {', '.join(k.__name__ for k in _LOGITS)}; "
                            f"got a {type(base).__name__}")
        self._logit = _LOGITS[kind]
        _mlp_layout(getattr(base, mlp_attr))  # TypeError / ValueError unless an MLP with hidden layers
        self.condition_features = tuple(condition_features)
        features = [base.schema[name] for name in self.condition_features]  # KeyError for an unknown one
        self.condition_tables = None
        if condition_dim is not None and features:
            self.condition_tables = nn.ModuleDict({f.name: EmbeddingTable(f.vocab_size, condition_dim)
                                                   for f in features})
            for table in self.condition_tables.values():
                nn.init.normal_(table.weight, std=condition_init_std)
        self.base, self.schema = base, base.schema
        per_feature = condition_dim if condition_dim is not None else self._table().dim
        self.condition_width = len(self.condition_features) * per_feature  # 0: no condition (self-wise)

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


class APG(_Conditioned):
    """A base CTR model (DeepFM, DCN, DIN) whose MLP is an APG-MLP of the same widths:
    ``APG(DeepFM(schema), condition_features=("scenario",))``. Embeddings and explicit interaction
    parts stay static, as in the paper. The base model is not changed (see ``_Conditioned``): APG
    builds its own :class:`APGMLP` (a copy of the base MLP's activations, normalisation, dropout and
    output layer, with each hidden Linear replaced by an APGLinear) and calls it as ``mlp(h, z)``.

    condition_features: one feature is group-wise, several mix-wise, ``()`` self-wise.
    condition_dim, condition_init_std: the condition table (see ``_Conditioned``).
    """

    def __init__(self, base: nn.Module, condition_features=("scenario",), mlp_attr: str = "mlp",
                 rank=8, overparam=None, share_uv: bool = True, generate_bias: bool = True, hypernet_hidden=(),
                 condition_dim: int | None = 8, condition_init_std: float = 1.0):
        super().__init__(base, condition_features, mlp_attr, condition_dim, condition_init_std)
        self.mlp = APGMLP.from_mlp(getattr(base, mlp_attr), self.condition_width or None, rank=rank,
                                   overparam=overparam, share_uv=share_uv, generate_bias=generate_bias,
                                   hypernet_hidden=hypernet_hidden)

    def forward(self, batch) -> torch.Tensor:
        z = self.condition(batch)  # [B, d] or None (self-wise)
        return self._logit(self.base, batch, lambda h: self.mlp(h, z))

    def merge_(self) -> APG:
        self.mlp.merge_()
        return self


class ConditionInMLP(_Conditioned):
    """The simplest *static* alternative to APG: the same condition embedding z_i (same table, same
    init) concatenated to the MLP's input, ``mlp([h, z_i])``, with static weights. The MLP is a copy
    of the base MLP whose first Linear is wider by the condition width (a fresh Xavier-normal
    weight, zero bias, as ``ctrlib.layers.MLP``). Same arguments as :class:`APG`."""

    def __init__(self, base: nn.Module, condition_features=("scenario",), mlp_attr: str = "mlp",
                 condition_dim: int | None = 8, condition_init_std: float = 1.0):
        super().__init__(base, condition_features, mlp_attr, condition_dim, condition_init_std)
        if not self.condition_features:
            raise ValueError("ConditionInMLP needs at least one condition feature")
        self.mlp = copy.deepcopy(getattr(base, mlp_attr))
        i = _mlp_layout(self.mlp)[0][0]
        first = self.mlp.net[i]
        wider = nn.Linear(first.in_features + self.condition_width, first.out_features)
        nn.init.xavier_normal_(wider.weight)
        nn.init.zeros_(wider.bias)
        self.mlp.net[i] = wider

    def forward(self, batch) -> torch.Tensor:
        z = self.condition(batch)  # [B, d]
        return self._logit(self.base, batch, lambda h: self.mlp(torch.cat([h, z], dim=1)))

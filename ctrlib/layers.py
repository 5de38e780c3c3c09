"""Shared building blocks. Shapes: B = batch, F = fields, D = embedding size, L = sequence length."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema

# id() of the tables whose lookups give sparse row gradients; filled only inside ``sparse_row_gradients``.
_SPARSE_GRAD_TABLES: set[int] = set()


def lookup_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (any shape) of an embedding table ``weight [V, D]``: ``[*ids.shape, D]``, the numbers
    of ``F.embedding``. Every embedding table (:class:`FeatureEmbedding`, :class:`EmbeddingTable`) looks
    its rows up here.

    Inside ``sparse_row_gradients(tables)`` the gradient a table gets is a sparse COO tensor holding
    only the looked-up rows (``F.embedding(sparse=True)``: O(B D) whatever the table's size);
    elsewhere it is ``index_select``, whose dense backward (an ``index_add`` into a zero ``[V, D]``
    table) is 2-15x faster on CPU than ``F.embedding``'s."""
    flat = ids.reshape(-1)
    if id(weight) in _SPARSE_GRAD_TABLES and torch.is_grad_enabled():
        out = F.embedding(flat, weight, sparse=True)
    else:
        out = weight.index_select(0, flat)
    return out.view(*ids.shape, weight.shape[-1])


@contextlib.contextmanager
def sparse_row_gradients(tables):
    """Inside this block, lookups of ``tables`` (through :func:`lookup_rows`) give sparse row gradients."""
    added = [id(t) for t in tables if id(t) not in _SPARSE_GRAD_TABLES]
    _SPARSE_GRAD_TABLES.update(added)
    try:
        yield
    finally:
        _SPARSE_GRAD_TABLES.difference_update(added)


class EmbeddingTable(nn.Module):
    """A plain embedding table (an ``nn.Embedding`` replacement) that :func:`ctrlib.train.fit` knows is
    one: it gets ``embedding_l2`` and no weight decay, like :class:`FeatureEmbedding`. For tables not
    indexed by a schema feature (time buckets, a condition id, the generative rankers' tokens).

    Same initialisation as ``nn.Embedding`` (N(0, 1), the ``padding_idx`` row zero) and the same
    ``padding_idx`` semantics: the padding row's value is returned but gets no gradient from lookups."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.normal_(self.weight)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].fill_(0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = lookup_rows(self.weight, ids)  # [*ids.shape, D]
        if self.padding_idx is None:
            return rows
        return torch.where((ids == self.padding_idx).unsqueeze(-1), rows.detach(), rows)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class FeatureEmbedding(nn.Module):
    """Every id feature's embedding, looked up in ONE table with a row offset per embedding table.

    Features that share a table (``Categorical("item_id")`` and ``Sequence("hist_item_id",
    embedding="item_id")``) share rows. ``forward`` returns the field embeddings ``[B, F, D]``:
    categorical fields, then numeric fields (value x a learned vector per field), then
    sequences mean-pooled over their non-padding positions.
    Rows are initialised from N(0, ``init_std``), as in FuxiCTR and DeepCTR (N(0, 1e-4)).
    """

    def __init__(self, schema: Schema, dim: int, init_std: float = 1e-4, pool_sequences: bool = True):
        super().__init__()
        self.schema, self.dim, self.pool_sequences = schema, dim, pool_sequences
        self.table_offsets: dict[str, int] = {}
        rows = 0
        for table, size in schema.tables.items():
            self.table_offsets[table] = rows
            rows += size
        self.weight = nn.Parameter(torch.randn(max(rows, 1), dim) * init_std)
        self.categorical = [f.name for f in schema.categorical]
        self.register_buffer("cat_offsets", torch.tensor(
            [self.table_offsets[f.table] for f in schema.categorical], dtype=torch.long), persistent=False)
        self.register_buffer("cat_sizes", torch.tensor(
            [f.vocab_size for f in schema.categorical], dtype=torch.long), persistent=False)
        self.numeric = [f.name for f in schema.numeric]
        n_numeric = sum(f.dim for f in schema.numeric)
        self.numeric_weight = nn.Parameter(torch.randn(n_numeric, dim) * init_std) if n_numeric else None
        self.sequences = [f.name for f in schema.sequences] if pool_sequences else []

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + sum(f.dim for f in self.schema.numeric) + len(self.sequences)

    def lookup(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``ids`` (any shape) in ``feature``'s table: ``[*ids.shape, D]``."""
        f = self.schema[feature]
        self.check_ids((feature,), ids.reshape(-1, 1), f.vocab_size)
        return self.rows(ids + self.table_offsets[f.table])

    def table_weight(self, table: str) -> torch.Tensor:
        """The rows of one embedding table (a view of ``weight``): ``[vocab_size, D]``, row = id."""
        if table not in self.table_offsets:
            raise KeyError(f"no embedding table {table!r}; the tables are {list(self.table_offsets)}")
        start = self.table_offsets[table]
        return self.weight[start:start + self.schema.tables[table]]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (global row numbers, any shape) of the table: ``[*ids.shape, D]`` (see :func:`lookup_rows`)."""
        return lookup_rows(self.weight, ids)

    def check_ids(self, names, ids: torch.Tensor, sizes) -> None:
        """Every id in ``[0, vocab_size)`` of its own feature, so it can never reach another table's
        rows. ``ids`` ``[N, len(names)]``, ``sizes`` an int or ``[len(names)]``. Two passes over the
        ids and one sync per call (cost: benchmarks/bench_id_bounds.py)."""
        if torch.compiler.is_compiling():  # export / compile: a data-dependent branch cannot be traced;
            return                          # ctrlib.serving checks the ids of what an artefact is fed
        if ids.numel() and bool((ids.min() < 0) | (ids >= sizes).any()):
            bad = (ids < 0) | (ids >= sizes)  # [N, F]
            j = int(bad.any(0).nonzero()[0])
            raise IndexError(
                f"feature {names[j]!r} has {int(bad[:, j].sum())} ids outside this model's vocabulary "
                f"[0, {int(torch.as_tensor(sizes).expand(len(names))[j])}), e.g. {ids[bad[:, j], j][:5].tolist()}: "
                f"they would read another feature's embedding rows. Build the data and the model from the "
                f"same schema (the data's vocab_size is larger than the model's)")

    def get_extra_state(self) -> dict:
        """The table layout (name: rows, in row order), saved in the state dict and checked on loading."""
        return {"tables": dict(self.schema.tables)}

    def set_extra_state(self, state: dict) -> None:
        pass  # checked before any weight is copied, in _load_from_state_dict

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "_extra_state")
        if saved is not None and list(saved["tables"].items()) != list(self.schema.tables.items()):
            saved, mine = dict(saved["tables"]), dict(self.schema.tables)
            diff = [f"{t!r}: saved {saved.get(t, 'absent')}, this model {mine.get(t, 'absent')}"
                    for t in dict.fromkeys([*saved, *mine]) if saved.get(t) != mine.get(t)] or \
                [f"the same tables in another order: saved {list(saved)}, this model {list(mine)}"]
            raise ValueError(f"{prefix or 'the '}state dict comes from a FeatureEmbedding with another table "
                             f"layout (table: rows): {'; '.join(diff)}. Its rows would land in other features' "
                             f"tables; build the model from the schema it was trained with")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sequence(self, batch: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence feature's embeddings ``[B, L, D]`` (zero at padding) and its mask ``[B, L]``."""
        ids = batch[name]
        mask = ids > 0
        return self.lookup(name, ids) * mask.unsqueeze(-1), mask

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.categorical:
            ids = torch.stack([batch[n] for n in self.categorical], dim=1)  # [B, Fc]
            self.check_ids(self.categorical, ids, self.cat_sizes)
            parts.append(self.rows(ids + self.cat_offsets))  # [B, Fc, D]
        if self.numeric:
            values = torch.cat([batch[n].reshape(len(batch[n]), -1) for n in self.numeric], dim=1)  # [B, Fn]
            parts.append(values.unsqueeze(-1) * self.numeric_weight)  # [B, Fn, D]
        for name in self.sequences:
            parts.append(masked_mean(*self.sequence(batch, name)).unsqueeze(1))  # [B, 1, D]
        return torch.cat(parts, dim=1)


class LinearTerm(nn.Module):
    """The order-1 term: a bias plus one learned weight per id (and per numeric value)."""

    def __init__(self, schema: Schema, init_std: float = 1e-4):
        super().__init__()
        self.weights = FeatureEmbedding(schema, 1, init_std)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        return self.weights(batch).sum(dim=(1, 2)) + self.bias  # [B]


def random_keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """A Bernoulli(1 - p) keep mask (bool) and its exact keep probability, from 16 random bits per element.

    torch's CPU generator is serial and costs the same per call whether it returns a float or 64
    bits, so one 64-bit draw is cut into four 16-bit lanes: 4x fewer calls than one uniform per
    element. ``p`` is thereby rounded to a multiple of 1/65536 (returned keep probability)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # all 64 bits
    lanes = bits.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    dropped = round(p * 65536)
    return lanes >= dropped - 32768, 1 - dropped / 65536


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (inverted: keep with probability 1 - p, scale kept values by 1 / (1 - p)) with a
    cheaper mask on CPU (``random_keep_mask``). Same distribution as ``nn.Dropout`` up to p rounded
    to 1/65536; forward + backward take about a quarter of its time. ``nn.Dropout``'s
    ``bernoulli_`` was a third of a DeepFM training step (benchmarks/README.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep, keep_prob = random_keep_mask(x.shape, self.p, x.device)
        return x * (keep * x.new_tensor(1 / keep_prob))  # bool * 0-dim tensor of x.dtype: one pass


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then an optional output layer.

    ``activation`` is a module class (``nn.ReLU``) or the name of a per-unit activation
    (``"dice"``, ``"prelu"``, see :func:`make_activation`), which then also works on ``[..., in_dim]``
    inputs. ``xavier_init``: Xavier-normal weights and zero biases (FuxiCTR's DNN init), else
    PyTorch's default."""

    def __init__(self, in_dim: int, hidden=(400, 400, 400), out_dim: int | None = 1, dropout: float = 0.0,
                 activation: type[nn.Module] | str = nn.ReLU, batch_norm: bool = False, xavier_init: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_ChannelLast(make_activation(activation, h)) if isinstance(activation, str) else activation())
            if dropout:
                layers.append(FastDropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim if out_dim is not None else in_dim
        if xavier_init:
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fm_interaction(e: torch.Tensor) -> torch.Tensor:
    """The FM pairwise term  sum_{i<j} <e_i, e_j>  in O(F D):
    0.5 * sum_d [(sum_i e_id)^2 - sum_i e_id^2]  (Rendle 2010, eq. 5).  ``[B, F, D] -> [B]``."""
    square_of_sum = e.sum(dim=1).pow(2)  # [B, D]
    sum_of_square = e.pow(2).sum(dim=1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNet(nn.Module):
    """DCN's cross network. ``x0, x: [B, d]``.

    version 1 (Wang et al. 2017, eq. 3):  x_{l+1} = x0 * (x_l . w_l) + b_l + x_l   (a rank-1 map)
    version 2 (Wang et al. 2021, eq. 1):  x_{l+1} = x0 * (W_l x_l + b_l) + x_l    (full rank W_l,
    or W_l = U_l V_l^T of rank ``low_rank``, the paper's cost-saving variant).
    Each layer raises the polynomial degree of the crosses by one. ``residual=False`` drops the
    ``+ x_l`` (DHEN's DCN module: the DHEN layer's shortcut plays that part).
    """

    def __init__(self, dim: int, num_layers: int = 3, version: int = 2, low_rank: int | None = None,
                 residual: bool = True):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version}")
        self.version, self.residual = version, residual

        def weight():
            if version == 1:
                return nn.Linear(dim, 1, bias=False)
            if low_rank:
                return nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim, bias=False))
            return nn.Linear(dim, dim, bias=False)

        self.weights = nn.ModuleList(weight() for _ in range(num_layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            if self.version == 1:
                cross = x0 * w(x) + b  # w(x) = x_l . w_l is [B, 1], one scalar per row
            else:
                cross = x0 * (w(x) + b)  # w(x) = W_l x_l is [B, d]
            x = cross + x if self.residual else cross
        return x


def dot_interaction(e: torch.Tensor) -> torch.Tensor:
    """DLRM's pairwise dot products <e_i, e_j> for i < j.  ``[B, F, D] -> [B, F(F-1)/2]``."""
    n = e.shape[1]
    gram = e @ e.transpose(1, 2)  # [B, F, F]
    i, j = torch.triu_indices(n, n, offset=1, device=e.device)
    return gram[:, i, j]


# --------------------------------------------------------------------------- user behaviour
# Attention over a behaviour sequence. Shapes: query [B, D] (the target item), keys [B, L, D]
# (the history, zero at padding), mask [B, L] (True at real behaviours).

class Dice(nn.Module):
    """DIN's data-adaptive activation (Zhou et al. 2018, eq. 9):

        f(s) = p(s) * s + (1 - p(s)) * alpha * s,   p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))

    E and Var are the mini-batch mean and (biased) variance per unit in training, their moving
    averages at inference (a BatchNorm without scale and shift). ``alpha`` is learned per unit
    (initialised at 0). Any input ``[..., dim]``; statistics are over all leading positions.
    PReLU is the special case where p(s) is the step function 1[s > 0].
    """

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.bn(x.reshape(-1, x.shape[-1]))).reshape(x.shape)
        return x * (self.alpha + (1 - self.alpha) * p)  # = p x + (1 - p) alpha x, in fewer passes


def make_activation(name: str, dim: int) -> nn.Module:
    """``"dice"``, ``"prelu"`` (one slope per unit), ``"relu"`` or ``"sigmoid"`` for a layer of width ``dim``."""
    if name == "dice":
        return Dice(dim)
    if name == "prelu":
        return nn.PReLU(dim, init=0.25)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"activation must be dice, prelu, relu or sigmoid, got {name!r}")


class _ChannelLast(nn.Module):
    """Apply a per-unit activation (PReLU expects channels on dim 1) to ``[..., dim]`` inputs."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ActivationMLP(MLP):
    """The behaviour models' MLP: a named activation (Dice, PReLU, ...) after each hidden layer,
    PyTorch's default init; works on ``[..., in_dim]`` inputs (``[B, L, in_dim]`` in the activation unit)."""

    def __init__(self, in_dim: int, hidden=(200, 80), activation: str = "dice", out_dim: int | None = 1,
                 dropout: float = 0.0):
        super().__init__(in_dim, hidden, out_dim, dropout, activation=activation, xavier_init=False)


class ActivationUnit(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018, Fig. 2 and eq. 3): the weight of behaviour j
    for the target v is  w_j = a(e_j, v) = MLP([e_j, v, e_j - v, e_j * v]),  with NO softmax, so
    the weights need not sum to one and the pooled vector keeps the intensity of the interest.
    Returns ``[B, L]``, zero at padding."""

    def __init__(self, dim: int, hidden=(36,), activation: str = "dice"):
        super().__init__()
        self.mlp = ActivationMLP(4 * dim, hidden, activation, out_dim=1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The first layer without building the [B, L, 4D] input: with W = [W1 W2 W3 W4] (one D-wide
        # block per part),  W [e; v; e - v; e * v] = (W1 + W3) e + W4 (e * v) + (W2 - W3) v,  and the
        # v term is computed once per sample instead of once per behaviour. Same function, same
        # parameters as the concatenation (``self.mlp`` applied to it gives the same numbers).
        first = self.mlp.net[0]
        w1, w2, w3, w4 = first.weight.split(keys.shape[-1], dim=1)
        h = F.linear(keys, w1 + w3) + F.linear(keys * query.unsqueeze(1), w4)   # [B, L, H]
        h = h + F.linear(query, w2 - w3, first.bias).unsqueeze(1)              # + [B, 1, H]
        return self.mlp.net[1:](h).squeeze(-1) * mask                          # [B, L]


def attention_pooling(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """sum_j w_j e_j  (DIN eq. 3):  ``weights [B, L], keys [B, L, D] -> [B, D]``."""
    return torch.einsum("bl,bld->bd", weights, keys)


def masked_mean(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real positions (zero for an empty history): ``[B, L, D], [B, L] -> [B, D]``."""
    return (keys * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; an all-padding row gets all-zero weights."""
    w = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


class TargetAttention(nn.Module):
    """Softmax target attention: the target item queries the behaviour sequence.

        head_h = softmax_j( (W_q^h v) . (W_k^h e_j) / sqrt(d_h) ) (W_v^h e_j),  out = W_o [head_1; ...; head_H]

    The scaled dot-product attention of the Transformer with one query (the candidate), masked
    at padding; the block behind BST-style models, the time-aware chapters and TARQ's teacher.
    ``forward(query [B, Dq], keys [B, L, Dk], mask [B, L], values=None)`` returns
    ``(out [B, dim], weights [B, H, L])``; with Q queries per sample, ``query [B, Q, Dq]``, it
    returns ``(out [B, Q, dim], weights [B, H, Q, L])`` (TARQ: every codeword queries the history
    once per request; ``query [1, Q, Dq]`` shares the queries across the batch).
    """

    def __init__(self, query_dim: int, key_dim: int, dim: int | None = None, num_heads: int = 1,
                 out_proj: bool = True):
        super().__init__()
        dim = dim or key_dim
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads = dim, num_heads
        self.q = nn.Linear(query_dim, dim, bias=False)
        self.k = nn.Linear(key_dim, dim, bias=False)
        self.v = nn.Linear(key_dim, dim, bias=False)
        self.o = nn.Linear(dim, dim) if out_proj else nn.Identity()

    def forward(self, query, keys, mask, values=None):
        if query.dim() == 3:
            return self._many(query, keys, mask, values)
        B, L, _ = keys.shape
        H, dh = self.num_heads, self.dim // self.num_heads
        q = self.q(query).view(B, H, dh)                                # [B, H, dh]
        k = self.k(keys).view(B, L, H, dh)                              # [B, L, H, dh]
        v = self.v(keys if values is None else values).view(B, L, H, dh)
        scores = torch.einsum("bhd,blhd->bhl", q, k) / dh ** 0.5        # [B, H, L]
        w = masked_softmax(scores, mask.unsqueeze(1))                   # [B, H, L]
        out = torch.einsum("bhl,blhd->bhd", w, v).reshape(B, self.dim)  # [B, dim]
        return self.o(out), w

    def _many(self, query, keys, mask, values=None):
        """Q queries per sample: ``query [B, Q, Dq]`` (or ``[1, Q, Dq]``: the same queries for every
        sample, projected once) -> ``(out [B, Q, dim], weights [B, H, Q, L])``."""
        B, L, _ = keys.shape
        Q, H, dh = query.shape[1], self.num_heads, self.dim // self.num_heads
        q = self.q(query).view(-1, Q, H, dh).transpose(1, 2)                  # [B or 1, H, Q, dh]
        k = self.k(keys).view(B, L, H, dh).transpose(1, 2)                    # [B, H, L, dh]
        v = self.v(keys if values is None else values).view(B, L, H, dh).transpose(1, 2)
        scores = q @ k.transpose(2, 3) / dh ** 0.5                            # [B, H, Q, L]
        w = masked_softmax(scores, mask[:, None, None, :])                    # [B, H, Q, L]
        out = (w @ v).transpose(1, 2).reshape(B, Q, self.dim)                 # [B, Q, dim]
        return self.o(out), w


def behaviour_pairs(schema: Schema, pairs=None) -> list[tuple[str, str]]:
    """(candidate feature, history sequence) pairs: given, or every sequence whose embedding table
    is shared with a categorical feature. All paired sequences must have the same length."""
    if pairs is None:
        by_table = {f.table: f.name for f in schema.categorical}
        pairs = [(by_table[s.table], s.name) for s in schema.sequences if s.table in by_table]
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("no behaviour sequence shares an embedding table with a candidate feature; "
                         "declare Sequence(..., embedding='item_id') or pass pairs")
    lengths = {schema[s].max_len for _, s in pairs}
    if len(lengths) > 1:
        raise ValueError(f"paired sequences must have one length, got {lengths}")
    return pairs


class BehaviourEmbedding(nn.Module):
    """The embeddings a behaviour model (DIN, DIEN) reads, from ONE table (a candidate and its history
    share rows): the other fields ``[B, F, D]`` (candidate, profile, context; unpaired sequences
    mean-pooled), the candidate query ``[B, P*D]``, the history keys ``[B, L, P*D]`` (zero at
    padding) and the history mask ``[B, L]``. ``pairs``: see :func:`behaviour_pairs`."""

    def __init__(self, schema: Schema, dim: int, pairs=None, init_std: float = 1e-4):
        super().__init__()
        self.pairs = behaviour_pairs(schema, pairs)
        paired = {s for _, s in self.pairs}
        self.table = FeatureEmbedding(schema, dim, init_std, pool_sequences=False)
        self.unpaired = [s.name for s in schema.sequences if s.name not in paired]
        self.width = len(self.pairs) * dim

    @property
    def num_fields(self) -> int:
        return self.table.num_fields + len(self.unpaired)

    def forward(self, batch):
        fields = self.table(batch)                                                               # [B, F, D]
        if self.unpaired:
            pooled = [masked_mean(*self.table.sequence(batch, s)).unsqueeze(1) for s in self.unpaired]
            fields = torch.cat([fields, *pooled], dim=1)
        query = torch.cat([self.table.lookup(t, batch[t]) for t, _ in self.pairs], dim=-1)       # [B, P*D]
        seqs = [self.table.sequence(batch, s) for _, s in self.pairs]
        keys = torch.cat([e for e, _ in seqs], dim=-1)                                           # [B, L, P*D]
        return fields, query, keys, seqs[0][1]


# --------------------------------------------------------------------------- sequence encoders
class SequenceEncoder(nn.Module):
    """A behaviour sequence encoded by one causal self-attention block, then pooled into one token.

        h_t = LayerNorm(e_t + W_o softmax_{s <= t, s real}( (W_q e_t) . (W_k e_s) / sqrt(D) ) W_v e_s)

    Position t sees only itself and the past, so h_t can be trained to predict the next action
    (:func:`next_action_loss`). The token is the target attention of the candidate to the states
    (:class:`TargetAttention`) when a ``query`` is given, their masked mean otherwise.
    ``keys [B, L, D]`` (zero at padding), ``mask [B, L]`` -> ``(token [B, D], states [B, L, D])``."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.pool = TargetAttention(dim, dim)

    def states(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = keys.shape[1]
        scores = self.q(keys) @ self.k(keys).transpose(1, 2) / keys.shape[-1] ** 0.5   # [B, L, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=keys.device).tril()          # s <= t
        allowed = causal & mask.unsqueeze(1)                                             # [B, L, L]
        h = self.o(masked_softmax(scores, allowed) @ self.v(keys))                       # [B, L, D]
        return self.norm(keys + h) * mask.unsqueeze(-1)                                  # 0 at padding

    def forward(self, keys, mask, query=None):
        states = self.states(keys, mask)                                                 # [B, L, D]
        token = masked_mean(states, mask) if query is None else self.pool(query, states, mask)[0]
        return token, states


def next_action_loss(states: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                     num_negatives: int = 4) -> torch.Tensor:
    """The next-action loss (TransAct V2's form): the state h_t must score the next action e_{t+1}
    above ``num_negatives`` in-batch negatives n (the next actions of other rows of the batch):

        L = - mean_t log( exp(<h_t, e_{t+1}>) / (exp(<h_t, e_{t+1}>) + sum_n exp(<h_t, n>)) )

    over the positions t where both h_t and e_{t+1} are real. ``states, keys [B, L, D]``, ``mask [B, L]``."""
    h, nxt = states[:, :-1], keys[:, 1:]                                               # [B, L-1, D]
    valid = mask[:, :-1] & mask[:, 1:]                                                 # [B, L-1]
    negatives = torch.stack([nxt.roll(r, dims=0) for r in range(1, num_negatives + 1)], dim=2)  # [B, L-1, K, D]
    candidates = torch.cat([nxt.unsqueeze(2), negatives], dim=2)                       # [B, L-1, 1+K, D]
    logits = torch.einsum("bld,blkd->blk", h, candidates)                              # [B, L-1, 1+K]
    loss = -torch.log_softmax(logits, dim=-1)[..., 0]                                  # the positive is first
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class FieldTokens(nn.Module):
    """The feature-processing layer of the multi-task CVR models (DHEN, MMoE, PLE): the list of
    field embeddings X_0 ``[B, m, D]`` of DHEN (Zhang et al. 2022, sec. 3.1): categorical fields,
    numeric fields, then one token per sequence, each sequence with its own
    :class:`SequenceEncoder` (kept separate, as the Pinterest paper finds best) and pooled by the
    candidate feature sharing its table (mean pooling when none does).
    ``forward(batch) -> (tokens [B, m, D], {sequence: (states, keys, mask)})``."""

    def __init__(self, schema: Schema, dim: int, init_std: float = 1e-4):
        super().__init__()
        self.table = FeatureEmbedding(schema, dim, init_std, pool_sequences=False)
        by_table = {f.table: f.name for f in schema.categorical}
        self.queries = {s.name: by_table.get(s.table) for s in schema.sequences}
        self.encoders = nn.ModuleDict({s: SequenceEncoder(dim) for s in self.queries})

    @property
    def num_fields(self) -> int:
        return self.table.num_fields + len(self.queries)

    def forward(self, batch):
        parts = [self.table(batch)] if self.table.num_fields else []                   # [B, F, D]
        encoded = {}
        for name, query in self.queries.items():
            keys, mask = self.table.sequence(batch, name)                              # [B, L, D], [B, L]
            q = self.table.lookup(query, batch[query]) if query else None              # [B, D]
            token, states = self.encoders[name](keys, mask, q)
            parts.append(token.unsqueeze(1))                                           # [B, 1, D]
            encoded[name] = (states, keys, mask)
        return torch.cat(parts, dim=1), encoded


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``with eval_mode(model): ...`` runs the block in eval mode (dropout off, BatchNorm and Dice on
    their running statistics) and then gives every submodule back the mode it had."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training

"""TLSI: time-aware long- and short-term user interest ("Time Matters", Gui, arXiv 2511.06213).

The claim: a user activates different interests at different times, so the user representation
should depend on the target item AND on the prediction time t*. Time-blind sequence models (DIN,
DIEN) learn a mixture of the interests expressed at all times.

The full paper was not available when this was written: the architecture below follows the
abstract and secondary summaries, and every detail is *our implementation choice* (the book's
chapter says which). Notation: B batch, L long history, S short history, d embedding size.

* Time encoders (:class:`TimeEncoder`), the two patterns made explicit:
  periodic code   tau_p(t)        = [E_hour(hour(t)); E_dow(weekday(t))]              in R^d
  time-point code tau_tp(t | t*)  = E_gap(bucket(log2(1 + (t* - t) / 60 s)))          in R^d
  tau(t | t*) = [tau_p(t); tau_tp(t | t*)]                                             in R^2d
  We read "time-point pattern" as the time-point *distance* between the prediction and a
  behaviour (the note's reading (b)): an absolute-date embedding cannot generalise to the unseen
  future dates a split by time puts in the test set. Absolute-date events reach the model only
  through the latest behaviours, which this code lets the attention single out.
* Long-term interest (:class:`TimeAwareAttention`): content score (a DIN activation unit) plus a
  time score, one softmax over the history:
  s_j = MLP_c([e_j, e_i, e_j - e_i, e_j * e_i]) + <W_q tau(t*), W_k tau(t_j)> / sqrt(d)
  alpha = softmax_j(s_j);   u_L = sum_j alpha_j (e_j + W_v tau(t_j))
* Short-term interest (:class:`TimeLSTM`): a Time-LSTM (Zhu et al., IJCAI 2017) over the last S
  behaviours with gaps Delta_k = log(1 + (t_k - t_{k-1}) / 60 s), and a learned decay to "now":
  u_S = h_S * exp(-lambda * log(1 + (t* - t_S) / 60 s)).
* Gated fusion: g = sigmoid(W_g [u_L; u_S; e_i; tau(t*)]);  u = g * u_L + (1 - g) * u_S.
* Prediction: MLP([u; e_i; u * e_i; every categorical field's embedding]) -> logit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ctrlib.data.schema import Schema, Timestamp, gap_bucket, hour_and_weekday
from ctrlib.layers import MLP, ActivationUnit, EmbeddingTable, FeatureEmbedding, eval_mode, masked_softmax

def fourier_table(period: int, dim: int, scale: float = 0.5) -> torch.Tensor:
    """``[period, dim]``: row p = scale * [cos(2 pi k p / period), sin(2 pi k p / period)] for
    k = 1..dim/2 (harmonics wrap beyond period/2). Dot products of two rows depend only on the
    cyclic distance of p and p', largest at 0."""
    k = torch.arange(1, dim // 2 + 1, dtype=torch.float32)
    angle = 2 * math.pi * torch.arange(period, dtype=torch.float32)[:, None] * k[None, :] / period
    return scale * torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


class TimeEncoder(nn.Module):
    """tau(t | t*) = [tau_p(t); tau_tp(t | t*)] in R^{2d}: the periodic code of time t and the
    time-point code of its distance to the prediction time t*. A switched-off part is zeros (the
    shapes stay, so ablations change nothing else). The hour and weekday tables are learned but
    start as Fourier features (:func:`fourier_table`), so that neighbouring hours start alike."""

    def __init__(self, dim: int, periodic: bool = True, time_point: bool = True, n_buckets: int = 20):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even (hour and weekday halves), got {dim}")
        self.dim, self.periodic, self.time_point, self.n_buckets = dim, periodic, time_point, n_buckets
        self.hour = EmbeddingTable(24, dim // 2)
        self.weekday = EmbeddingTable(7, dim // 2)
        self.gap = EmbeddingTable(n_buckets, dim)
        nn.init.normal_(self.gap.weight, std=0.1)
        with torch.no_grad():  # our choice: start the clock codes as Fourier features (near hours alike)
            self.hour.weight.copy_(fourier_table(24, dim // 2))
            self.weekday.weight.copy_(fourier_table(7, dim // 2))

    @property
    def out_dim(self) -> int:
        return 2 * self.dim

    def periodic_code(self, t: torch.Tensor) -> torch.Tensor:
        """tau_p(t) = [E_hour(hour(t)); E_dow(weekday(t))]: ``[*t.shape, d]``."""
        hour, dow = hour_and_weekday(t)
        return torch.cat([self.hour(hour), self.weekday(dow)], dim=-1)

    def time_point_code(self, t: torch.Tensor, t_star: torch.Tensor) -> torch.Tensor:
        """tau_tp(t | t*) = E_gap(bucket(t* - t)): ``[*t.shape, d]`` (t* broadcast from ``[B]``)."""
        t_star = t_star.reshape(t_star.shape + (1,) * (t.dim() - t_star.dim()))
        return self.gap(gap_bucket(t_star - t, self.n_buckets))

    def forward(self, t: torch.Tensor, t_star: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(*t.shape, self.dim, device=t.device)
        p = self.periodic_code(t) if self.periodic else zeros
        tp = self.time_point_code(t, t_star) if self.time_point else zeros
        return torch.cat([p, tp], dim=-1)  # [*t.shape, 2d]


class TimeAwareAttention(nn.Module):
    """Long-term interest: content- and time-based attention over the history (one softmax).

    s^c_j = MLP_c([e_j, e_i, e_j - e_i, e_j * e_i])           content: DIN's activation unit
    s^t_j = <W_q tau(t*), W_k tau(t_j)> / sqrt(d)              time relevance to the prediction time
    alpha = softmax_j(s^c_j + s^t_j), padding masked;  u_L = sum_j alpha_j (e_j + W_v tau(t_j))
    With ``time_attention=False`` only s^c is used and the values are e_j (a softmax DIN).
    """

    def __init__(self, dim: int, time_dim: int, hidden=(32,), time_attention: bool = True,
                 activation: str = "relu"):
        super().__init__()
        self.dim, self.time_attention = dim, time_attention
        self.content = ActivationUnit(dim, hidden, activation)                          # s^c
        self.w_q = nn.Linear(time_dim, dim)
        self.w_k = nn.Linear(time_dim, dim)
        self.w_v = nn.Linear(time_dim, dim, bias=False)

    def scores(self, keys, target, mask, tau_keys, tau_query) -> torch.Tensor:
        """Pre-softmax scores ``[B, L]`` (-inf at padding)."""
        s = self.content(target, keys, mask)                                          # [B, L]
        if self.time_attention:
            s = s + (self.w_k(tau_keys) * self.w_q(tau_query).unsqueeze(1)).sum(-1) / math.sqrt(self.dim)
        return s.masked_fill(~mask, float("-inf"))

    def forward(self, keys, target, mask, tau_keys, tau_query) -> tuple[torch.Tensor, torch.Tensor]:
        """keys ``[B, L, d]``, target ``[B, d]``, mask ``[B, L]``, tau_keys ``[B, L, 2d]``,
        tau_query ``[B, 2d]`` -> (u_L ``[B, d]``, alpha ``[B, L]``; an empty history gives zeros)."""
        alpha = masked_softmax(self.scores(keys, target, mask, tau_keys, tau_query), mask)  # [B, L]
        values = keys + self.w_v(tau_keys) if self.time_attention else keys
        return (alpha.unsqueeze(-1) * values).sum(1), alpha


class TimeLSTMCell(nn.Module):
    """One step of the Time-LSTM (Zhu et al. 2017, "Time-LSTM 1" with an output-gate time term).

    i = sig(W_i x + U_i h + b_i)      f = sig(W_f x + U_f h + b_f)
    T = sig(W_xt x + sig(W_t Delta) + b_t)                       the time gate
    c~ = tanh(W_c x + U_c h + b_c)    c' = f * c + i * T * c~
    o = sig(W_o x + U_o h + V_o Delta + b_o)                      h' = o * tanh(c')
    ``time_aware=False`` drops T and V_o: a plain LSTM cell (same gate order as torch's LSTMCell:
    ``x_proj`` rows are i, f, c~, o).
    """

    def __init__(self, input_dim: int, hidden_dim: int, time_aware: bool = True):
        super().__init__()
        self.hidden_dim, self.time_aware = hidden_dim, time_aware
        self.x_proj = nn.Linear(input_dim, 4 * hidden_dim)             # W_{i,f,c,o} x + b
        self.h_proj = nn.Linear(hidden_dim, 4 * hidden_dim, bias=False)  # U_{i,f,c,o} h
        if time_aware:
            self.x_time = nn.Linear(input_dim, hidden_dim)              # W_xt x + b_t
            self.w_t = nn.Linear(1, hidden_dim, bias=False)             # W_t Delta
            self.v_o = nn.Linear(1, hidden_dim, bias=False)             # V_o Delta

    def forward(self, x: torch.Tensor, delta: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x ``[B, in]``, delta ``[B]`` (log gap), state (h, c) each ``[B, H]`` -> (h', c')."""
        h, c = state
        i, f, g, o = (self.x_proj(x) + self.h_proj(h)).chunk(4, dim=-1)
        i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
        if self.time_aware:
            d = delta.unsqueeze(-1)                                       # [B, 1]
            T = torch.sigmoid(self.x_time(x) + torch.sigmoid(self.w_t(d)))
            c = f * c + i * T * g
            o = torch.sigmoid(o + self.v_o(d))
        else:
            c = f * c + i * g
            o = torch.sigmoid(o)
        return o * torch.tanh(c), c


class TimeLSTM(nn.Module):
    """Runs a :class:`TimeLSTMCell` over a left-padded sequence; padding steps keep the state.

    Delta_k = log(1 + (t_k - t_{k-1}) / 60 s), 0 for the first real behaviour.
    """

    def __init__(self, input_dim: int, hidden_dim: int, time_aware: bool = True):
        super().__init__()
        self.cell = TimeLSTMCell(input_dim, hidden_dim, time_aware)

    @staticmethod
    def deltas(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log gaps between consecutive real behaviours ``[B, S]`` (0 at padding and the first)."""
        gap = torch.zeros_like(t, dtype=torch.float32)
        both = mask[:, 1:] & mask[:, :-1]
        gap[:, 1:] = torch.where(both, (t[:, 1:] - t[:, :-1]).clamp(min=0).float() / 60, 0.0)
        return torch.log1p(gap)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x ``[B, S, in]``, t ``[B, S]`` (seconds), mask ``[B, S]`` -> last hidden state ``[B, H]``."""
        B, S, _ = x.shape
        H = self.cell.hidden_dim
        h, c = state if state is not None else (x.new_zeros(B, H), x.new_zeros(B, H))
        delta = self.deltas(t, mask)
        for k in range(S):
            h2, c2 = self.cell(x[:, k], delta[:, k], (h, c))
            m = mask[:, k].unsqueeze(-1)
            h, c = torch.where(m, h2, h), torch.where(m, c2, c)
        return h


class TLSI(nn.Module):
    """Time-aware long- and short-term interest CTR model. ``model(batch) -> logits [B]``.

    The schema declares the two times as :class:`~ctrlib.data.schema.Timestamp` features:
    ``time`` (the prediction time t*, ``[B]`` seconds) and ``history_time`` (``[B, L]``, aligned
    with ``history``). ``embedding_dim`` is d, ``hidden`` the top MLP's layers. The short history
    is the last ``short_len`` behaviours of the long one. The flags switch off one
    component each (the chapter's ablations): ``long``/``short`` (keep one module), ``time_attention``
    (content-only attention), ``periodic`` / ``time_point`` (zero that part of every time code),
    ``time_lstm`` (a plain LSTM, no decay to now), ``gate`` (u = (u_L + u_S) / 2). Id embeddings
    start at N(0, ``init_std``); the clock tables as in :class:`TimeEncoder`.
    """

    def __init__(self, schema: Schema, embedding_dim: int = 16, hidden=(128, 64), *, short_len: int = 10,
                 item: str = "item_id", category: str = "category", history: str = "hist_item_id",
                 history_category: str = "hist_category", time: str = "timestamp",
                 history_time: str = "hist_timestamp", long: bool = True, short: bool = True,
                 time_attention: bool = True, periodic: bool = True, time_point: bool = True,
                 time_lstm: bool = True, gate: bool = True, attention_hidden=(32,), dropout: float = 0.0,
                 init_std: float = 0.05):
        super().__init__()
        if not (long or short):
            raise ValueError("TLSI needs the long-term module, the short-term module, or both")
        declared = {f.name: f for f in schema.features}
        for name, max_len in ((time, None), (history_time, schema[history].max_len)):
            spec = declared.get(name)
            if not isinstance(spec, Timestamp) or spec.max_len != max_len:
                raise ValueError(f"TLSI reads the times from the schema: declare Timestamp({name!r}, "
                                 f"max_len={max_len}); got {spec}")
        dim = embedding_dim
        self.schema = schema
        self.names = dict(item=item, category=category, history=history, history_category=history_category,
                          time=time, history_time=history_time)
        self.short_len, self.long, self.short, self.gate_on, self.time_lstm = short_len, long, short, gate, time_lstm
        self.embedding = FeatureEmbedding(schema, dim, init_std=init_std, pool_sequences=False)
        self.time = TimeEncoder(dim, periodic=periodic, time_point=time_point)
        T = self.time.out_dim
        self.attention = TimeAwareAttention(dim, T, attention_hidden, time_attention) if long else None
        self.lstm = TimeLSTM(dim, dim, time_aware=time_lstm) if short else None
        self.decay = nn.Parameter(torch.full((dim,), -3.0)) if short and time_lstm else None  # softplus -> lambda
        self.gate = nn.Linear(3 * dim + T, dim) if (long and short and gate) else None
        n_fields = len(schema.categorical)
        self.mlp = MLP(3 * dim + n_fields * dim, hidden, out_dim=1, dropout=dropout)

    def _item(self, batch, item: str, category: str) -> torch.Tensor:
        e = self.embedding.lookup(item, batch[item])
        return e + self.embedding.lookup(category, batch[category]) if category else e

    def represent(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The intermediate tensors: target ``e_i``, ``u_L``, ``alpha``, ``u_S``, ``g``, user ``u``."""
        n = self.names
        t_star, t_hist = batch[n["time"]], batch[n["history_time"]]      # [B], [B, L]
        e_i = self._item(batch, n["item"], n["category"])                # [B, d]
        keys, mask = self.embedding.sequence(batch, n["history"])        # [B, L, d], [B, L]
        if n["history_category"]:
            keys = keys + self.embedding.sequence(batch, n["history_category"])[0]
        tau_q = self.time(t_star, t_star)                                 # [B, 2d]
        out = {"e_i": e_i}
        if self.long:
            tau_k = self.time(t_hist, t_star)                             # [B, L, 2d]
            out["u_L"], out["alpha"] = self.attention(keys, e_i, mask, tau_k, tau_q)
        if self.short:
            S = self.short_len
            h = self.lstm(keys[:, -S:], t_hist[:, -S:], mask[:, -S:])    # [B, d]
            if self.decay is not None:                                     # recency decay to t*
                last = t_hist[:, -1]
                gap = torch.where(mask[:, -1], (t_star - last).clamp(min=0).float() / 60, 0.0)
                h = h * torch.exp(-F.softplus(self.decay) * torch.log1p(gap).unsqueeze(-1))
            out["u_S"] = h
        if self.long and self.short:
            if self.gate is not None:
                g = torch.sigmoid(self.gate(torch.cat([out["u_L"], out["u_S"], e_i, tau_q], dim=-1)))
                out["g"] = g
                out["u"] = g * out["u_L"] + (1 - g) * out["u_S"]
            else:
                out["u"] = 0.5 * (out["u_L"] + out["u_S"])
        else:
            out["u"] = out["u_L"] if self.long else out["u_S"]
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r = self.represent(batch)
        u, e_i = r["u"], r["e_i"]
        fields = self.embedding(batch).flatten(1)                          # [B, F * d]
        return self.mlp(torch.cat([u, e_i, u * e_i, fields], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """alpha ``[B, L]`` of the long-term attention (eval mode)."""
        if not self.long:
            raise ValueError("this TLSI has no long-term module")
        with eval_mode(self):
            return self.represent(batch)["alpha"]

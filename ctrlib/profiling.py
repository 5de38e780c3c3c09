"""Time and memory of small modules on the CPU, measured so that ratios compare like with like.

* :func:`interleaved_ms`: repeated wall-time samples of several functions, taken in turns (every
  repeat runs each function once, in a rotating order), so that all of them see the same machine
  load; the samples go to :func:`ctrlib.experiment.compare_samples` for an interval of a ratio.
* :func:`peak_memory_mib`: the peak of live tensor memory while a function runs (PyTorch profiler).
* :func:`request_latency`: pre-rankers' per-request latency vs the number of candidates (TARQ chapter).
* :func:`apg_ladder` and :func:`measure_layers`: the APG chapter's efficiency ladder, one layer
  ``[B, N] -> [B, M]`` per rung, from a regular ``nn.Linear`` to APG as used
  (``benchmarks/bench_apg.py`` runs a larger grid).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from ctrlib.models.apg import APGLinear


@contextlib.contextmanager
def _quiet_native_output():
    """Silence what C++ writes to file descriptors 1 and 2 (the profiler's start/stop lines and
    its allocator warning), so notebooks stay readable; Python-level output is untouched."""
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
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = np.cumsum([e.self_cpu_memory_usage for e in events]) if events else np.zeros(1)
    return float(max(live.max(), 0.0)) / 2 ** 20


def median_ms(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds (after ``warmup`` calls)."""
    return statistics.median(interleaved_ms({"fn": fn}, repeats, warmup=warmup)["fn"])


def interleaved_ms(fns: dict, repeats: int = 5, number: int = 1, warmup: int = 1,
                   clock=time.perf_counter) -> dict[str, list[float]]:
    """``repeats`` wall-time samples (ms) of each function in ``fns`` (name -> callable).

    One sample is the mean time of ``number`` consecutive calls. Every repeat takes one sample of
    each function, in an order rotated by one each repeat, so that slow phases of a shared machine
    hit every function alike. ``warmup`` untimed calls of each function come first. ``clock``:
    ``time.thread_time`` measures the calling thread's CPU time instead of wall time (single-threaded
    work on a shared machine: the time the work took, not the time other processes held the core).
    """
    if repeats < 1 or number < 1:
        raise ValueError(f"repeats and number must be >= 1, got {repeats} and {number}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = clock()
            for _ in range(number):
                fns[name]()
            samples[name].append((clock() - start) * 1e3 / number)
    return samples


# -- the APG efficiency ladder -----------------------------------------------------------------

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


LADDER = ("regular", "basic APG", "low rank, W materialised", "+ decomposed", "+ sharing (APG)",
          "+ over-param, training form", "+ over-param, merged")


def apg_ladder(n: int, m: int, condition_dim: int = 16, rank: int = 8, overparam: int = 64) -> dict[str, nn.Module]:
    """The rungs of the paper's efficiency ladder, each a layer ``(x [B, n], z [B, d]) -> [B, m]``:

    * ``regular``: ``nn.Linear(n, m)``, the static layer APG replaces (eq. 1);
    * ``basic APG``: the generator emits the whole ``W_i`` (eq. 2);
    * ``low rank, W materialised``: ``W_i = U_i S_i V_i`` generated and formed, then multiplied (eq. 3);
    * ``+ decomposed``: the same generated factors, applied as ``((h U_i) S_i) V_i`` (eq. 4);
    * ``+ sharing (APG)``: ``U, V`` shared, only ``S_i`` (and ``b_i``) generated (eq. 5);
    * ``+ over-param, training form``: ``U = U_l U_r``, ``V = V_l V_r`` with inner width ``overparam`` (eq. 6);
    * ``+ over-param, merged``: the same layer after :meth:`APGLinear.merge_` (what is served).
    """
    trained = APGLinear(n, m, condition_dim, rank=rank, overparam=overparam)
    merged = APGLinear(n, m, condition_dim, rank=rank, overparam=overparam)
    merged.load_state_dict(trained.state_dict())
    layers = [_Regular(n, m), APGLinear(n, m, condition_dim, rank=None),
              _Materialised(APGLinear(n, m, condition_dim, rank=rank, share_uv=False)),
              APGLinear(n, m, condition_dim, rank=rank, share_uv=False),
              APGLinear(n, m, condition_dim, rank=rank), trained, merged.merge_()]
    return dict(zip(LADDER, layers))


def measure_layers(widths=(64, 256), batch_sizes=(256, 1024), condition_dim: int = 16, rank: int = 8,
                   overparam: int = 64, repeats: int = 5, number: int = 1, variants=None, seed: int = 0,
                   memory_repeats: int = 1):
    """One row per (rung, width, batch size, repeat): parameters, the time of a training step
    (forward + backward) and of inference (eval, no grad) in ms, and the MiB of the parameters and
    of the peak tensor memory of a train step and of inference (:func:`peak_memory_mib`). Widths are
    N = M. The rungs of one setting are timed interleaved (:func:`interleaved_ms`), so their
    ratios compare like with like. Memory is probed ``memory_repeats`` times per rung (row ``r`` holds
    probe ``r % memory_repeats``): once is enough for a table, as the probe is deterministic, and
    ``memory_repeats=repeats`` gives every row its own probe for an interval."""
    import pandas as pd

    rows = []
    for width in widths:
        torch.manual_seed(seed)
        layers = apg_ladder(width, width, condition_dim, rank, overparam)
        names = list(layers) if variants is None else list(variants)
        for batch in batch_sizes:
            x, z = torch.randn(batch, width), torch.randn(batch, condition_dim)
            train, infer = {}, {}
            for name in names:
                layer, params = layers[name], list(layers[name].parameters())

                def train_step(layer=layer, params=params, x=x, z=z):
                    for p in params:
                        p.grad = None
                    layer(x, z).square().mean().backward()

                def inference(layer=layer, x=x, z=z):
                    with torch.no_grad():
                        layer(x, z)

                train[name], infer[name] = train_step, inference
            train_ms = interleaved_ms(train, repeats, number)
            infer_ms = interleaved_ms(infer, repeats, number)
            for name in names:
                params = sum(p.numel() for p in layers[name].parameters())
                param_bytes = sum(p.numel() * p.element_size() for p in layers[name].parameters())
                peak_memory_mib(train[name])  # warm-up probe: the first one also counts one-off allocations
                probes = [(peak_memory_mib(train[name]), peak_memory_mib(infer[name])) for _ in range(memory_repeats)]
                for r in range(repeats):
                    train_mib, infer_mib = probes[r % memory_repeats]
                    rows.append({"variant": name, "width": width, "batch": batch, "repeat": r, "params": params,
                                 "train_ms": train_ms[name][r], "infer_ms": infer_ms[name][r],
                                 "param_mib": param_bytes / 2 ** 20, "train_peak_mib": train_mib,
                                 "infer_peak_mib": infer_mib})
    return pd.DataFrame(rows)


__all__ = ["peak_memory_mib", "median_ms", "interleaved_ms", "apg_ladder", "measure_layers", "LADDER"]


# -- pre-ranking: latency per request vs the number of candidates -------------------------------

def request_latency(serve: dict, n_items: int, candidates=(10, 100, 1_000, 10_000), repeats: int = 7,
                    seed: int = 0, clock=None):
    """Per-request latency (ms) of pre-rankers vs the number of candidates M.

    ``serve[name](rows)`` does *all* of one request's work for the item-index rows ``rows``
    ``[1, M]`` (user side and candidates) and returns the scores. For each M the models are timed
    interleaved (:func:`interleaved_ms`, one warm-up call each), on the same random rows (drawn
    with replacement from ``n_items``). ``clock``: by default the thread's CPU time when torch runs
    one thread (then it is the work's latency, whatever else the machine runs), else wall time.
    Returns a long frame: ``model``, ``candidates``, ``repeat``, ``ms``."""
    import pandas as pd

    if clock is None:
        clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for m in candidates:
            idx = torch.randint(0, n_items, (1, m), generator=g)
            samples = interleaved_ms({name: (lambda f=f, idx=idx: f(idx)) for name, f in serve.items()}, repeats,
                                     clock=clock)
            rows += [{"model": name, "candidates": m, "repeat": r, "ms": t}
                     for name, ts in samples.items() for r, t in enumerate(ts)]
    return pd.DataFrame(rows)


def preranking_servers(request: dict, items: dict, models: dict) -> dict:
    """``name -> serve(rows)`` for :func:`request_latency`. ``request``: a batch of one row (the
    user's fields and history); ``items``: a batch of one row per indexed item. A
    :class:`~ctrlib.models.TwoTower` runs its user tower per request and takes dot products with
    item vectors computed here, offline; a :class:`~ctrlib.models.TARQ` runs
    :meth:`~ctrlib.models.TARQ.request_state` per request and scores by code lookups (or, teacher
    only, by one attention per candidate) against :meth:`~ctrlib.models.TARQ.index_items`."""
    from ctrlib.models import TARQ

    out = {}
    with torch.no_grad():
        for name, m in models.items():
            m.eval()
            if isinstance(m, TARQ):
                index = m.index_items(items)
                out[name] = lambda rows, m=m, index=index: m.score(m.request_state(request), index, rows)
            else:
                v = m.towers(items)[1]                                        # [N, D] offline
                out[name] = lambda rows, m=m, v=v: (v.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)
                                                    @ m.towers(request)[0][:, :, None]).squeeze(-1) + m.bias
    return out

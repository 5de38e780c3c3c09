"""Clock features of integer timestamps (seconds): hour of day, day of week, log-bucketed gaps.

The time-aware models read raw seconds (:class:`ctrlib.data.schema.Timestamp` features) and turn
them into codes with :func:`hour_and_weekday` and :func:`gap_bucket` (defined beside
``Timestamp`` in the schema module, which model files may import); :func:`add_time_gaps` turns
them into an id feature a time-blind model can embed (the chapter's "DIN with time gaps").
"""
from __future__ import annotations

import torch

from ctrlib.data.schema import (N_GAP_BUCKETS, SECONDS_PER_DAY, SECONDS_PER_HOUR, Categorical, Schema, Sequence,
                                Timestamp, gap_bucket, hour_and_weekday)
from ctrlib.data.tensors import TensorData

__all__ = ["N_GAP_BUCKETS", "SECONDS_PER_DAY", "SECONDS_PER_HOUR", "add_time_gaps", "gap_bucket", "hour_and_weekday"]

def add_time_gaps(data: TensorData, schema: Schema, time: str = "timestamp", history_time: str = "hist_timestamp",
                  history: str = "hist_item_id", name: str = "gap") -> tuple[TensorData, Schema]:
    """The gap between each behaviour and the prediction time as a side feature of the behaviour.

    Adds ``hist_<name>`` ``[N, L]``: :func:`gap_bucket` ``(t* - t_j) + 1`` at real behaviours (the
    ids of ``history`` > 0), 0 at padding; and the candidate's own gap ``name`` ``[N]`` = 1 (bucket
    0: it is shown now). Both share one embedding table, so a behaviour model (DIN) pairs them like
    item and history item: the candidate's key is (item, category, gap 0), behaviour j's is (item,
    category, gap_j). Returns new data and schema; the inputs are not modified.
    """
    declared = {f.name: f for f in schema.features}
    for f, kind in ((time, None), (history_time, schema[history].max_len)):
        spec = declared.get(f)
        if not isinstance(spec, Timestamp) or spec.max_len != kind:
            raise ValueError(f"{f!r} must be declared Timestamp({f!r}, max_len={kind}) in the schema, got {spec}")
    t_star, t_hist = data[time], data[history_time]                                   # [N], [N, L]
    real = data[history] > 0
    gaps = torch.where(real, gap_bucket(t_star[:, None] - t_hist) + 1, 0)             # [N, L]
    tensors = {**data.tensors, name: torch.ones_like(t_star), f"hist_{name}": gaps}
    vocab = N_GAP_BUCKETS + 1                                                         # padding + buckets
    L = schema[history].max_len
    return TensorData(tensors), schema.add(Categorical(name, vocab), Sequence(f"hist_{name}", vocab, L, embedding=name))

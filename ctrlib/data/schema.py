"""Feature schema: declare the features once; every model reads the same schema and batch.

A batch is a ``dict[str, torch.Tensor]``: one entry per feature (``[B]`` ids for categorical,
``[B]`` or ``[B, k]`` floats for numeric, ``[B, L]`` ids for sequences, 0 = padding, ``[B]`` or
``[B, L]`` int64 seconds for timestamps) and one per label. Features that name the same
``embedding`` share one table, e.g. a target ``item_id`` and its history ``hist_item_id``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ctrlib import checks as C


def _check_feature(f) -> None:
    """A feature's name and sizes, checked where it is declared."""
    kind = type(f).__name__
    if not isinstance(f.name, str) or not f.name:
        raise TypeError(f"a {kind} feature needs a non-empty string name, got {f.name!r}")
    if hasattr(f, "vocab_size"):
        C.integer(f"{kind}({f.name!r}).vocab_size", f.vocab_size, 1,
                  hint="it counts every id the feature can hold: padding 0, the known values and OOV "
                       "(Vocab.size)")
    if hasattr(f, "max_len"):
        C.integer(f"Sequence({f.name!r}).max_len", f.max_len, 1)
    if hasattr(f, "dim"):
        C.integer(f"Numeric({f.name!r}).dim", f.dim, 1)
    if getattr(f, "embedding", None) is not None and (not isinstance(f.embedding, str) or not f.embedding):
        raise TypeError(f"{kind}({f.name!r}).embedding must be a table name (a non-empty string) or None, "
                        f"got {f.embedding!r}")


class _Checked:
    """Every feature spec is checked when it is made."""

    def __post_init__(self):
        _check_feature(self)


class _IdFeature(_Checked):
    """What the id features share: the embedding table they read (their own name unless shared)."""

    @property
    def table(self) -> str:
        return self.embedding or self.name


@dataclass(frozen=True)
class Categorical(_IdFeature):
    """An id feature. ``vocab_size`` counts padding (0) and the out-of-vocabulary bucket."""

    name: str
    vocab_size: int
    embedding: str | None = None  # table name; defaults to the feature's own name


@dataclass(frozen=True)
class Numeric(_Checked):
    """A real-valued feature of ``dim`` values per sample."""

    name: str
    dim: int = 1


@dataclass(frozen=True)
class Sequence(_IdFeature):
    """A left-padded id sequence of length ``max_len`` (0 = padding)."""

    name: str
    vocab_size: int
    max_len: int
    embedding: str | None = None


@dataclass(frozen=True)
class Timestamp:
    """Integer seconds (int64): a prediction time ``[B]``, or with ``max_len`` the times of a
    left-padded behaviour sequence ``[B, max_len]`` (aligned with an id sequence of that length;
    padding positions hold 0 and models mask them by the ids). Not embedded: time-aware models
    read the raw seconds (e.g. TLSI's clock codes)."""

    name: str
    max_len: int | None = None

    def __post_init__(self):
        if self.max_len is not None and self.max_len <= 0:
            raise ValueError(f"timestamp sequence {self.name!r}: max_len must be positive, got {self.max_len}")


# Clock features of Timestamp values (seconds), shared by the time-aware models and ctrlib.data.clock.
SECONDS_PER_HOUR, SECONDS_PER_DAY = 3600, 86_400
N_GAP_BUCKETS = 20


def hour_and_weekday(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hour of day (0..23) and day of week (0..6) of integer timestamps in seconds (any shape).
    Floor division, so times before the epoch (negative) are handled too."""
    hour = torch.remainder(torch.div(t, SECONDS_PER_HOUR, rounding_mode="floor"), 24)
    dow = torch.remainder(torch.div(t, SECONDS_PER_DAY, rounding_mode="floor"), 7)
    return hour, dow


def gap_bucket(gap_seconds: torch.Tensor, n_buckets: int = N_GAP_BUCKETS) -> torch.Tensor:
    """Log2 buckets of a time gap in minutes: 0 for under a minute, b for [2^b - 1, 2^(b+1) - 1)
    minutes, clamped to ``n_buckets - 1`` (bucket 19 starts at about a year). Negative gaps -> 0."""
    minutes = gap_seconds.clamp(min=0).double() / 60
    return torch.floor(torch.log2(1 + minutes)).long().clamp(max=n_buckets - 1)


Feature = Categorical | Numeric | Sequence | Timestamp


@dataclass(frozen=True)
class Schema:
    """The features a model reads and the labels it predicts."""

    features: tuple[Feature, ...]
    labels: tuple[str, ...] = ("label",)
    extras: tuple[str, ...] = field(default=())  # carried along (e.g. user_id for GAUC), not fed

    def __post_init__(self):
        for arg in ("features", "labels", "extras"):
            if isinstance(getattr(self, arg), str):
                raise TypeError(f"Schema {arg} must be a tuple, got the string {getattr(self, arg)!r}; "
                                f"write {arg}=({getattr(self, arg)!r},)")
        odd = [f for f in self.features if not isinstance(f, (Categorical, Numeric, Sequence, Timestamp))]
        if odd:
            raise TypeError(f"Schema features must be Categorical, Numeric, Sequence or Timestamp, got {odd[:3]}")
        if not self.labels:
            raise ValueError("a Schema needs at least one label column, e.g. labels=('label',)")
        names = [f.name for f in self.features]
        clash = sorted(set(names) & set(self.labels))
        if clash:
            raise ValueError(f"{clash} are declared both as features and as labels: a model must not read its label")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature names must be unique, repeated: {sorted(dup)}")
        sizes: dict[str, int] = {}
        for f in self.id_features:
            if sizes.setdefault(f.table, f.vocab_size) != f.vocab_size:
                raise ValueError(
                    f"features sharing embedding table {f.table!r} disagree on vocab_size "
                    f"({sizes[f.table]} vs {f.vocab_size} for {f.name!r})")

    def of_kind(self, *kinds: type) -> list:
        """The features of the given spec classes, in declaration order."""
        return [f for f in self.features if isinstance(f, kinds)]

    categorical = property(lambda self: self.of_kind(Categorical), doc="The Categorical features.")
    numeric = property(lambda self: self.of_kind(Numeric), doc="The Numeric features.")
    sequences = property(lambda self: self.of_kind(Sequence), doc="The id Sequence features.")
    timestamps = property(lambda self: self.of_kind(Timestamp), doc="The Timestamp features.")
    id_features = property(lambda self: self.of_kind(Categorical, Sequence), doc="Features read from a table.")

    @property
    def tables(self) -> dict[str, int]:
        """Embedding table name -> number of rows, in declaration order."""
        out: dict[str, int] = {}
        for f in self.id_features:
            out.setdefault(f.table, f.vocab_size)
        return out

    @property
    def label(self) -> str:
        return self.labels[0]

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"unknown feature {name!r}; the schema has {[f.name for f in self.features]}")

    def select(self, *names: str) -> Schema:
        """A schema with only the named features (same labels and extras)."""
        return Schema(tuple(self[n] for n in names), self.labels, self.extras)

    def add(self, *features: Feature) -> Schema:
        """A schema with ``features`` appended (same labels and extras)."""
        return Schema(self.features + tuple(features), self.labels, self.extras)

    def drop(self, *names: str) -> Schema:
        for n in names:
            self[n]  # raises a clear KeyError on a typo
        return Schema(tuple(f for f in self.features if f.name not in names), self.labels, self.extras)

    @property
    def columns(self) -> list[str]:
        """Every column a batch holds: features, labels, extras."""
        return [f.name for f in self.features] + list(self.labels) + list(self.extras)

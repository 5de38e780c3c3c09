"""Feature schema: declare the features once; every model reads the same schema and batch.

A batch is a ``dict[str, torch.Tensor]``: one entry per feature (``[B]`` ids for categorical,
``[B]`` or ``[B, k]`` floats for numeric, ``[B, L]`` ids for sequences, 0 = padding, ``[B]`` or
``[B, L]`` int64 seconds for timestamps) and one per label. Features that name the same ``embedding`` share one table, e.g. a target ``item_id`` and
its history ``hist_item_id``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Categorical:
    """An id feature. ``vocab_size`` counts padding (0) and the out-of-vocabulary bucket."""

    name: str
    vocab_size: int
    embedding: str | None = None  # table name; defaults to the feature's own name

    @property
    def table(self) -> str:
        return self.embedding or self.name


@dataclass(frozen=True)
class Numeric:
    """A real-valued feature of ``dim`` values per sample."""

    name: str
    dim: int = 1


@dataclass(frozen=True)
class Sequence:
    """A left-padded id sequence of length ``max_len`` (0 = padding)."""

    name: str
    vocab_size: int
    max_len: int
    embedding: str | None = None

    @property
    def table(self) -> str:
        return self.embedding or self.name


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


Feature = Categorical | Numeric | Sequence | Timestamp


@dataclass(frozen=True)
class Schema:
    """The features a model reads and the labels it predicts."""

    features: tuple[Feature, ...]
    labels: tuple[str, ...] = ("label",)
    extras: tuple[str, ...] = field(default=())  # carried along (e.g. user_id for GAUC), not fed

    def __post_init__(self):
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature names must be unique, repeated: {sorted(dup)}")
        sizes: dict[str, int] = {}
        for f in self.id_features:
            if sizes.setdefault(f.table, f.vocab_size) != f.vocab_size:
                raise ValueError(
                    f"features sharing embedding table {f.table!r} disagree on vocab_size "
                    f"({sizes[f.table]} vs {f.vocab_size} for {f.name!r})")

    @property
    def categorical(self) -> list[Categorical]:
        return [f for f in self.features if isinstance(f, Categorical)]

    @property
    def numeric(self) -> list[Numeric]:
        return [f for f in self.features if isinstance(f, Numeric)]

    @property
    def sequences(self) -> list[Sequence]:
        return [f for f in self.features if isinstance(f, Sequence)]

    @property
    def timestamps(self) -> list[Timestamp]:
        return [f for f in self.features if isinstance(f, Timestamp)]

    @property
    def id_features(self) -> list[Categorical | Sequence]:
        return [f for f in self.features if isinstance(f, (Categorical, Sequence))]

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

    def select(self, *names: str) -> "Schema":
        """A schema with only the named features (same labels and extras)."""
        return Schema(tuple(self[n] for n in names), self.labels, self.extras)

    def add(self, *features: Feature) -> "Schema":
        """A schema with ``features`` appended (same labels and extras)."""
        return Schema(self.features + tuple(features), self.labels, self.extras)

    def drop(self, *names: str) -> "Schema":
        for n in names:
            self[n]  # raises a clear KeyError on a typo
        return Schema(tuple(f for f in self.features if f.name not in names), self.labels, self.extras)

    @property
    def columns(self) -> list[str]:
        """Every column a batch holds: features, labels, extras."""
        return [f.name for f in self.features] + list(self.labels) + list(self.extras)

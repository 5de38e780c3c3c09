"""Feature schema: declare the features once; every model reads the same schema and batch.

A batch is a ``dict[str, torch.Tensor]``: one entry per feature (``[B]`` ids for categorical,
``[B]`` or ``[B, k]`` floats for numeric, ``[B, L]`` ids for sequences, 0 = padding) and one per
label. Features that name the same ``embedding`` share one table, e.g. a target ``item_id`` and
its history ``hist_item_id``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Categorical:
    """An id feature. ``vocab_size`` counts padding (0) and the out-of-vocabulary bucket."""

    name: str
    vocab_size: int
    embedding: str | None = None  # table name; defaults to the feature's own name

    def __post_init__(self):
        _check_feature(self)

    @property
    def table(self) -> str:
        return self.embedding or self.name


@dataclass(frozen=True)
class Numeric:
    """A real-valued feature of ``dim`` values per sample."""

    name: str
    dim: int = 1

    def __post_init__(self):
        _check_feature(self)


@dataclass(frozen=True)
class Sequence:
    """A left-padded id sequence of length ``max_len`` (0 = padding)."""

    name: str
    vocab_size: int
    max_len: int
    embedding: str | None = None

    def __post_init__(self):
        _check_feature(self)

    @property
    def table(self) -> str:
        return self.embedding or self.name


Feature = Categorical | Numeric | Sequence


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
        odd = [f for f in self.features if not isinstance(f, (Categorical, Numeric, Sequence))]
        if odd:
            raise TypeError(f"Schema features must be Categorical, Numeric or Sequence, got {odd[:3]}")
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
    def id_features(self) -> list[Categorical | Sequence]:
        return [f for f in self.features if not isinstance(f, Numeric)]

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

    def drop(self, *names: str) -> Schema:
        for n in names:
            self[n]  # raises a clear KeyError on a typo
        return Schema(tuple(f for f in self.features if f.name not in names), self.labels, self.extras)

    @property
    def columns(self) -> list[str]:
        """Every column a batch holds: features, labels, extras."""
        return [f.name for f in self.features] + list(self.labels) + list(self.extras)

"""BARS benchmark datasets (Frappe_x1, MovielensLatest_x1, Criteo_x1, Avazu_x1) from files you have.

The BARS open benchmark for CTR prediction (reczoo/BARS, reczoo/Datasets) publishes fixed splits as
``train.csv``, ``valid.csv`` and ``test.csv`` with an md5 checksum per file. ``load_bars(name,
root)`` checks the files' headers against the dataset's published column list and their md5
against the published checksums, then builds the data with :func:`ctrlib.data.from_frames`
(vocabularies fitted on train, ``min_count=1`` as the BARS protocol says). Nothing is downloaded:
``data/README.md`` says where each dataset is obtained and under which licence.

``root`` is the folder holding the three files, or a folder with a ``<name>/`` subfolder holding
them (default: ``$CTRLIB_DATA_DIR`` or ``data/``). md5 is computed in 1 MiB blocks (Criteo_x1's
train.csv is several GB: about half a minute); ``verify=False`` skips it, ``checksums=`` replaces the
published digests (for a file you subsampled yourself).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctrlib.data.frames import FrameData, from_frames, read_table
from ctrlib.data.movielens import ChecksumMismatchError, CorruptDatasetError, DatasetUnavailableError, default_data_dir

FILES = ("train.csv", "valid.csv", "test.csv")


@dataclass(frozen=True)
class BarsDataset:
    """One BARS dataset: its files' columns, the published md5 of each file, rows and where it comes from."""
    name: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    md5: dict
    rows: dict
    download: str
    source: str
    label: str = "label"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.label, *self.numeric, *self.categorical)


BARS = {d.name: d for d in (
    BarsDataset(
        "Frappe_x1",
        categorical=("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country",
                     "city"),
        numeric=(),
        md5={"train.csv": "ba7306e6c4fc19dd2cd84f2f0596d158", "valid.csv": "88d51bf2173505436d3a8f78f2a59da8",
             "test.csv": "3470f6d32713dc5f7715f198ca7c612a"},
        rows={"train.csv": 202_027, "valid.csv": 57_722, "test.csv": 28_860},
        download="https://huggingface.co/datasets/reczoo/Frappe_x1", source="https://www.baltrunas.info/context-aware"),
    BarsDataset(
        "MovielensLatest_x1",
        categorical=("user_id", "item_id", "tag_id"), numeric=(),
        md5={"train.csv": "efc8bceeaa0e895d566470fc99f3f271", "valid.csv": "e1930223a5026e910ed5a48687de8af1",
             "test.csv": "54e8c6baff2e059fe067fb9b69e692d0"},
        rows={"train.csv": 1_404_801, "valid.csv": 401_373, "test.csv": 200_686},
        download="https://huggingface.co/datasets/reczoo/MovielensLatest_x1",
        source="https://grouplens.org/datasets/movielens"),
    BarsDataset(
        "Criteo_x1",
        categorical=tuple(f"C{i}" for i in range(1, 27)), numeric=tuple(f"I{i}" for i in range(1, 14)),
        md5={"train.csv": "30b89c1c7213013b92df52ec44f52dc5", "valid.csv": "f73c71fb3c4f66b6ebdfa032646bea72",
             "test.csv": "2c48b26e84c04a69b948082edae46f8c"},
        rows={"train.csv": 33_003_326, "valid.csv": 8_250_124, "test.csv": 4_587_167},
        download="https://huggingface.co/datasets/reczoo/Criteo_x1",
        source="https://www.kaggle.com/c/criteo-display-ad-challenge"),
    BarsDataset(
        "Avazu_x1",
        categorical=tuple(f"feat_{i}" for i in range(1, 23)), numeric=(),
        md5={"train.csv": "f1114a07aea9e996842c71648e0f6395", "valid.csv": "d9568f246357d156c4b8030fadb8b623",
             "test.csv": "9e2fe9c48705c9315ae7a0953eb57acf"},
        rows={},
        download="https://huggingface.co/datasets/reczoo/Avazu_x1",
        source="https://www.kaggle.com/c/avazu-ctr-prediction"),
)}


def md5(path, block: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def bars_folder(name: str, root=None) -> Path:
    """The folder holding ``name``'s three files: ``root`` itself or ``root/<name>``; a clear
    :class:`DatasetUnavailableError`-style message (``FileNotFoundError``) when neither has them."""
    spec = _spec(name)
    base = Path(root).expanduser() if root is not None else default_data_dir()
    for folder in (base, base / spec.name):
        if all((folder / f).is_file() for f in FILES):
            return folder
    found = [str(p.relative_to(base)) for p in sorted(base.glob("**/*.csv"))[:10]] if base.is_dir() else []
    raise FileNotFoundError(
        f"{spec.name}: no train.csv, valid.csv and test.csv in {base} or {base / spec.name} "
        f"(CSV files found there: {found or 'none'}). Download the dataset from {spec.download} "
        f"(see data/README.md), unzip it and pass root=<that folder>")


def _spec(name: str) -> BarsDataset:
    by_lower = {k.lower(): v for k, v in BARS.items()}
    if not isinstance(name, str) or name.lower() not in by_lower:
        raise ValueError(f"unknown BARS dataset {name!r}: load_bars knows {list(BARS)}")
    return by_lower[name.lower()]


def check_header(spec: BarsDataset, path: Path) -> list[str]:
    """The file's columns, or a :class:`CorruptDatasetError` naming the missing and unexpected ones."""
    header = list(read_table(path, columns_as_str=[], nrows=0).columns)
    missing = [c for c in spec.columns if c not in header]
    extra = [c for c in header if c not in spec.columns]
    if missing or extra:
        raise CorruptDatasetError(
            f"{spec.name} {path.name}: the header does not match the dataset's columns ({len(spec.columns)}: "
            f"{list(spec.columns)[:6]}...); missing {missing}, unexpected {extra}. Is it another dataset or a "
            f"file re-saved with an index column?")
    return header


def load_bars(name: str, root=None, *, verify: bool = True, checksums: dict | None = None, min_count: int = 1,
              nrows: int | None = None) -> FrameData:
    """``name``'s train/valid/test splits as :class:`FrameData` (see the module docstring).

    ``nrows`` reads only the first rows of each file (a quick look; md5 is still of the whole file).
    Errors: ``FileNotFoundError`` (files absent: where to get them), :class:`CorruptDatasetError` (wrong
    header), :class:`ChecksumMismatchError` (md5 differs from the published one)."""
    spec = _spec(name)
    folder = bars_folder(spec.name, root)
    expected = dict(spec.md5 if checksums is None else checksums)
    for f in FILES:
        path = folder / f
        check_header(spec, path)
        if verify:
            got = md5(path)
            if got != expected.get(f):
                raise ChecksumMismatchError(
                    str(path), "md5", str(expected.get(f)), got,
                    f"the file differs from the published {spec.name} split (truncated download, re-saved, "
                    f"or another version). Fetch it again from {spec.download}; load_bars(..., verify=False) "
                    f"reads it anyway")
    as_str = list(spec.categorical)
    frames = [read_table(folder / f, columns_as_str=as_str, nrows=nrows) for f in FILES]
    for f, df in zip(FILES, frames):
        bad = ~df[spec.label].isin([0, 1])
        if bad.any():
            raise CorruptDatasetError(f"{spec.name} {f}: the label must be 0/1; {int(bad.sum())} rows are not, "
                                      f"e.g. {df.loc[bad, spec.label].head(3).tolist()}")
    if spec.numeric:
        for df in frames:  # FuxiCTR fills missing numeric values with 0
            df[list(spec.numeric)] = df[list(spec.numeric)].apply(pd.to_numeric, errors="coerce").fillna(0.0)
    return from_frames(*frames, categorical=list(spec.categorical), numeric=list(spec.numeric), label=spec.label,
                       min_count=min_count)


def bars_available(name: str, root=None) -> bool:
    """Whether ``name``'s three files are in ``root`` (or ``root/<name>``): for cells that skip cleanly."""
    try:
        bars_folder(name, root)
        return True
    except FileNotFoundError:
        return False


__all__ = ["BARS", "BarsDataset", "load_bars", "bars_available", "bars_folder", "check_header", "md5",
           "ChecksumMismatchError", "CorruptDatasetError", "DatasetUnavailableError"]

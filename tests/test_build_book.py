"""tools/build_book.py's kernel environment, timings file and execution-statistics page (no build)."""
from __future__ import annotations

import json

import build_book


def test_kernel_environment_defaults_and_respects_the_caller():
    env = build_book.kernel_environment({})
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(build_book.available_cores())}
    mine = build_book.kernel_environment({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"})
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}


def test_main_puts_the_kernel_environment_into_os_environ(monkeypatch, tmp_path):
    """The kernels papermill starts inherit os.environ: main() must set the policy before executing."""
    seen = {}

    def fake_execute(lay, nb, quick):
        import os
        seen.update({k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")})
        (lay.stage / nb.relative_to(build_book.ROOT)).write_bytes(nb.read_bytes())
        return 1.0

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(build_book, "execute", fake_execute)
    monkeypatch.setattr(build_book, "use_venv_kernel", lambda: None)
    stem = build_book.chapter_notebooks()[0].stem
    assert build_book.main(["--quick", "--only", stem, "--no-render", "--out", str(tmp_path)]) == 0
    assert seen == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(build_book.available_cores())}
    page = (tmp_path / "stage" / build_book.STATS_PAGE).read_text()
    assert f"{{doc}}`{stem}` | 1 s |" in page, page


def test_timings_keep_both_modes_and_earlier_chapters(tmp_path):
    path = tmp_path / "timings.json"
    started = {s: {"when": "2026-12-01T20:00:00+00:00", "load_1min": 0.5} for s in ("a", "b")}
    build_book.update_timings(path, "QUICK", {"a": 10.0, "b": 20.0}, started, {"OMP_WAIT_POLICY": "PASSIVE"})
    build_book.update_timings(path, "full", {"a": 300.0}, started, {})
    data = build_book.update_timings(path, "QUICK", {"b": 25.0}, started, {})  # --only b
    assert data == json.loads(path.read_text())
    quick, full = data["modes"]["QUICK"]["chapters"], data["modes"]["full"]["chapters"]
    assert {k: v["seconds"] for k, v in quick.items()} == {"a": 10.0, "b": 25.0}
    assert {k: v["seconds"] for k, v in full.items()} == {"a": 300.0}
    assert data["quick"] is True and data["seconds"] == {"a": 10.0, "b": 25.0}
    assert data["modes"]["QUICK"]["machine"]["cores"] == build_book.available_cores()
    assert not list(tmp_path.glob("*.tmp")), "timings.json must be written atomically"


def test_statistics_page(tmp_path):
    nbs = [tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"]
    started = {"01_a": {"when": "2026-12-01T20:00:00+00:00", "load_1min": 3.25}}
    data = build_book.update_timings(tmp_path / "t.json", "full", {"01_a": 400.0}, started, {})
    page = build_book.statistics_page(data, nbs)
    assert "| {doc}`01_a` | — | — | 6.7 min | 3.2 |" in page, page
    assert "| {doc}`02_b` | — | — | — | — |" in page
    assert "**full mode** (2026-12-01 to 2026-12-01)" in page and "QUICK mode**" not in page
    empty = build_book.statistics_page({}, nbs)
    assert empty.startswith("# Execution statistics") and "No timings" in empty


def test_timings_read_the_older_format(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"quick": True, "seconds": {"a": 12.0}}))
    started = {"b": {"when": "2026-12-01T20:00:00+00:00", "load_1min": 1.0}}
    data = build_book.update_timings(path, "QUICK", {"b": 3.0}, started, {})
    assert {k: v["seconds"] for k, v in data["modes"]["QUICK"]["chapters"].items()} == {"a": 12.0, "b": 3.0}
    assert "| {doc}`a` | 12 s | — |" in build_book.statistics_page(data, [tmp_path / "a.ipynb"])

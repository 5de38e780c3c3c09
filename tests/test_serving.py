"""Save/load bundles (bit-identical predictions in a fresh process, mismatches named) and exports
(ONNX and torch.export match eager within 1e-5 at any batch size; two-tower towers apart)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import ctrlib
from ctrlib import fit, predict, seed_everything
from ctrlib.data import Categorical, CTRWorld, Schema, Sequence, Vocab
from ctrlib.models import DIN, DeepFM, TwoTower
from ctrlib.serving import encode_rows

FIELDS = ["user_id", "age", "device", "item_id", "category", "hour"]
ITEM = ["item_id", "category"]
ROOT = Path(__file__).resolve().parents[1]


def _raw_world():
    """Simulator rows with raw (string) values, encoded through vocabularies fitted on the training part."""
    world = CTRWorld(seed=0, n_users=120, n_items=90, history_len=5, history_match=2.0)
    df = world.sample(1500, seed=0)
    raw = df[["label"]].copy()
    for c in FIELDS:
        raw[c] = [f"{c[0]}{v}" for v in df[c]]
    for c in ("hist_item_id", "hist_category"):
        base = c.removeprefix("hist_")
        raw[c] = [[f"{base[0]}{v}" for v in seq if v > 0] for seq in df[c]]
    train, test = raw.iloc[:1200], raw.iloc[1200:]
    vocabs = {c: Vocab.fit(train[c]) for c in FIELDS}
    features = [Categorical(c, vocabs[c].size) for c in FIELDS]
    features += [Sequence("hist_item_id", vocabs["item_id"].size, 5, embedding="item_id"),
                 Sequence("hist_category", vocabs["category"].size, 5, embedding="category")]
    return Schema(tuple(features)), vocabs, train, test


@pytest.fixture(scope="module")
def raw_world():
    return _raw_world()


def _trained(kind, schema, vocabs, train):
    seed_everything(0)
    config = {"deepfm": {"embedding_dim": 4, "hidden": [16]}, "din": {"embedding_dim": 4, "hidden": [16]},
              "two_tower": {"embedding_dim": 4, "hidden": [16], "out_dim": 8, "item_features": ITEM}}[kind]
    cls = {"deepfm": DeepFM, "din": DIN, "two_tower": TwoTower}[kind]
    sub = schema if kind != "deepfm" else schema.select(*FIELDS)
    model = cls(sub, **config)
    fit(model, encode_rows(train, sub, vocabs), None, epochs=2, batch_size=256, lr=1e-2, progress=False)
    return model.eval(), sub, config


def test_bundle_predicts_bit_identically_in_a_fresh_process(raw_world, tmp_path):
    schema, vocabs, train, test = raw_world
    rows = test.drop(columns="label").copy()
    rows.loc[rows.index[:5], "user_id"] = "a user never seen"       # unseen -> OOV, as in training
    rows.at[rows.index[5], "hist_item_id"] = ["i1", "never seen", "i2"]
    rows.to_pickle(tmp_path / "rows.pkl")
    expected = {}
    for kind in ("deepfm", "din"):
        model, sub, config = _trained(kind, schema, vocabs, train)
        ctrlib.save(tmp_path / f"{kind}.ctrlib", model, sub, vocabs, config)
        encoded = encode_rows(rows, sub, vocabs)
        assert (encoded["user_id"][:5] == vocabs["user_id"].oov).all()
        expected[kind] = predict(model, encoded)
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd, ctrlib
        rows = pd.read_pickle({str(tmp_path / 'rows.pkl')!r})
        for kind in ("deepfm", "din"):
            bundle = ctrlib.load({str(tmp_path)!r} + f"/{{kind}}.ctrlib")
            np.save({str(tmp_path)!r} + f"/{{kind}}.npy", bundle.predict(rows))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    for kind, p in expected.items():
        reloaded = np.load(tmp_path / f"{kind}.npy")
        assert reloaded.dtype == p.dtype and np.array_equal(reloaded, p), f"{kind}: predictions drift after reload"
    assert len(np.unique(expected["deepfm"])) > 10  # a trained model, not a constant


def test_a_mismatched_bundle_fails_naming_the_feature(raw_world, tmp_path):
    schema, vocabs, train, _ = raw_world
    model, sub, config = _trained("deepfm", schema, vocabs, train)
    # a vocabulary that does not fit its feature is refused on saving
    short = {**vocabs, "device": Vocab(vocabs["device"].values[:-1])}
    with pytest.raises(ValueError, match="feature 'device'"):
        ctrlib.save(tmp_path / "x.ctrlib", model, sub, short, config)
    # ... and a tampered bundle on loading
    path = ctrlib.save(tmp_path / "b.ctrlib", model, sub, vocabs, config)
    payload = torch.load(path, weights_only=True)
    payload["vocabs"]["hour"] = payload["vocabs"]["hour"][:-2]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="feature 'hour'"):
        ctrlib.load(path)
    # a bundle loaded against another schema (swapped vocabulary sizes) names the features that differ
    path = ctrlib.save(tmp_path / "c.ctrlib", model, sub, vocabs, config)
    sizes = {f.name: f.vocab_size for f in sub.features}
    swapped = Schema(tuple(Categorical(f.name, sizes["hour"] if f.name == "age" else sizes["age"] if f.name == "hour"
                                       else f.vocab_size) for f in sub.features))
    with pytest.raises(ValueError, match="feature 'age'.*feature 'hour'"):
        ctrlib.load(path, schema=swapped)
    assert ctrlib.load(path, schema=sub).schema == sub
    # a config that does not rebuild the model
    with pytest.raises(ValueError, match="does not rebuild"):
        ctrlib.save(tmp_path / "d.ctrlib", model, sub, vocabs, {"embedding_dim": 8, "hidden": [16]})
    # raw rows without a feature
    with pytest.raises(KeyError, match="device"):
        ctrlib.load(path).predict(train.drop(columns="device").head())


def test_bundles_load_with_weights_only_and_are_written_atomically(raw_world, tmp_path):
    schema, vocabs, train, _ = raw_world
    model, sub, config = _trained("deepfm", schema, vocabs, train)
    path = ctrlib.save(tmp_path / "m.ctrlib", model, sub, vocabs, config)
    torch.load(path, weights_only=True)  # plain containers and tensors only
    before = path.read_bytes()
    with pytest.raises(ValueError):  # a failed save leaves the old bundle and no temp file
        ctrlib.save(path, model, sub, {**vocabs, "age": Vocab(("x",))}, config)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.ctrlib"]
    path.write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="not a readable ctrlib bundle"):
        ctrlib.load(path)


def test_two_tower_vectors_equal_the_full_forward(raw_world):
    schema, vocabs, train, test = raw_world
    model, sub, config = _trained("two_tower", schema, vocabs, train)
    batch = encode_rows(test, sub, vocabs).tensors
    with torch.no_grad():
        user = model.user_vector({k: batch[k] for k in model.user_features})
        item = model.item_vector({k: batch[k] for k in model.item_features})
        torch.testing.assert_close((user * item).sum(-1) + model.bias, model(batch), rtol=0, atol=1e-6)
        u, v = model.towers(batch)
        torch.testing.assert_close(user, u, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("kind", ["deepfm", "din", "two_tower"])
def test_exports_match_eager_at_any_batch_size(raw_world, tmp_path, kind, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    schema, vocabs, train, test = raw_world
    model, sub, config = _trained(kind, schema, vocabs, train)
    batch = encode_rows(test, sub, vocabs).tensors
    example = {k: v[:16] for k, v in batch.items()}
    if kind == "two_tower":
        results = ctrlib.export_towers(model, example, tmp_path, format=fmt)
        user, item = (ctrlib.load_exported(results[s].path) for s in ("user", "item"))
        logits = (user(batch) * item(batch)).sum(-1) + model.bias.item()
        assert results["user"].inputs == model.user_features and results["item"].inputs == model.item_features
        errors = [r.max_abs_error for r in results.values()]
    else:
        result = ctrlib.export(model, example, tmp_path / f"m.{fmt}", format=fmt)
        logits = ctrlib.load_exported(result.path)(batch)   # 300 rows: another batch size than traced
        errors = [result.max_abs_error]
        assert json.loads(Path(f"{result.path}.json").read_text())["max_abs_error"] == result.max_abs_error
    with torch.no_grad():
        eager = model(batch).numpy()
    assert logits.shape == eager.shape == (len(test),)
    assert np.abs(logits - eager).max() <= 1e-5 and max(errors) <= 1e-5
    assert eager.std() > 1e-3  # trained, not all-equal logits


def test_exported_artefacts_check_their_inputs(raw_world, tmp_path):
    schema, vocabs, train, test = raw_world
    model, sub, config = _trained("deepfm", schema, vocabs, train)
    batch = encode_rows(test, sub, vocabs).tensors
    served = ctrlib.load_exported(ctrlib.export(model, batch, tmp_path / "m.pt2", format="torch").path)
    with pytest.raises(IndexError, match="'item_id'"):
        served({**batch, "item_id": batch["item_id"] + 1000})
    with pytest.raises(KeyError, match="hour"):
        served({k: v for k, v in batch.items() if k != "hour"})
    with pytest.raises(ValueError, match="unknown export format"):
        ctrlib.export(model, batch, tmp_path / "m.x", format="tflite")

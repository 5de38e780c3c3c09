"""fit's options from issue 18: names, presets, min_delta, the log line, the seed rule, devices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlib import evaluate, fit, predict, seed_everything
from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.models import DeepFM
from ctrlib.presets import BARS_KEYS, from_bars_config, preset
from ctrlib.train import resolve_device


def world_data(n=3000):
    world = CTRWorld(seed=0, n_users=200, n_items=100)
    schema = world.schema(["user_id", "item_id", "category", "hour"])
    return schema, [TensorData.from_frame(d, schema) for d in split_by_time(world.sample(n, seed=0))]


def build(schema, seed=0):
    torch.manual_seed(seed)
    return DeepFM(schema, 4, (8,), dropout=0.3)


def test_unknown_options_list_the_valid_names_and_translate_bars_keys():
    schema, (train, valid, _) = world_data(500)
    with pytest.raises(TypeError, match=r"unknown training option 'embedding_regularizer'; in ctrlib, "
                                        r"FuxiCTR/BARS' 'embedding_regularizer' is embedding_l2.*Valid options: "
                                        r"epochs, batch_size, lr"):
        fit(build(schema), train, valid, embedding_regularizer=0.05)
    with pytest.raises(TypeError, match=r"unknown training option 'pateince'; did you mean 'patience'\?"):
        fit(build(schema), train, valid, pateince=3)


def test_monitor_is_case_insensitive():
    schema, (train, valid, _) = world_data(500)
    r = fit(build(schema), train, valid, epochs=1, monitor="AUC", progress=False)
    assert r.config.monitor == "auc"


def test_bars_preset_and_config_translation():
    cfg = preset("bars", embedding_l2=0.05)
    assert (cfg.lr_decay, cfg.grad_clip, cfg.embedding_l2_rows, cfg.embedding_update, cfg.monitor, cfg.patience) == \
        (0.1, 10.0, "all", "dense", "auc", 2)
    out = from_bars_config({"learning_rate": 1e-3, "embedding_regularizer": "l2(0.01)", "net_regularizer": 0,
                            "batch_size": 4096, "embedding_dim": 10, "hidden_units": [400, 400, 400],
                            "net_dropout": 0.2, "monitor": "AUC", "min_categr_count": 1, "gpu": -1,
                            "optimizer": "adam", "model_id": "DeepFM"})
    assert out["train"].embedding_l2 == 0.01 and out["train"].device == "cpu" and out["train"].lr_decay == 0.1
    assert out["model"] == {"embedding_dim": 10, "hidden": (400, 400, 400), "dropout": 0.2}
    assert out["data"] == {"min_count": 1} and out["ignored"] == ["optimizer", "model_id"]
    assert all(where in ("train", "model", "data") for where, _, _ in BARS_KEYS.values())
    with pytest.raises(ValueError, match=r"unknown preset 'bras'.*did you mean 'bars'"):
        preset("bras")


def test_bars_preset_decays_the_lr_after_every_epoch_that_does_not_improve():
    schema, (train, valid, _) = world_data()
    r = fit(build(schema), train, valid, preset("bars", batch_size=256, epochs=8, lr=3e-2, patience=3),
            progress=False)
    auc = r.history.valid_auc.to_numpy()
    worse = np.array([a <= auc[:i].max() if i else False for i, a in enumerate(auc)])  # no new best
    expected = 3e-2 * 0.1 ** np.r_[0, np.cumsum(worse)[:-1]]    # the lr each epoch trained with
    assert np.allclose(r.history.lr.to_numpy(), expected), (r.history.lr.tolist(), expected)
    assert worse.any()  # the test saw at least one decay


def test_min_delta_stops_on_gains_smaller_than_it():
    schema, (train, valid, _) = world_data()
    base = dict(epochs=12, batch_size=256, lr=1e-2, patience=1, progress=False, seed=0)
    plain = fit(build(schema), train, valid, **base)
    strict = fit(build(schema), train, valid, **base, min_delta=0.02)
    auc = strict.history.valid_auc.to_numpy()
    assert len(strict.history) <= len(plain.history)
    # every epoch after the best one improved by at most min_delta over the best so far
    assert (auc[strict.best_epoch:] <= auc[strict.best_epoch - 1] + 0.02).all()
    assert strict.stop_reason == "early stopping"
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        fit(build(schema), train, valid, min_delta=-1)


def test_one_log_line_per_epoch_when_not_interactive(capsys, monkeypatch):
    schema, (train, valid, _) = world_data(500)
    monkeypatch.delenv("CTRLIB_HEADLESS", raising=False)
    fit(build(schema), train, valid, epochs=3, patience=5)            # pytest's stderr is no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "valid auc" not in lines[0] and "auc 0." in lines[0] and "train_loss" in lines[0]
    monkeypatch.setenv("CTRLIB_HEADLESS", "1")
    fit(build(schema), train, valid, epochs=2)
    assert "epoch 1/2" not in capsys.readouterr().err
    fit(build(schema), train, valid, epochs=2, progress="log")
    assert "epoch 2/2" in capsys.readouterr().err


def test_the_seed_rule_seed_everything_unless_fit_gets_a_seed():
    schema, (train, valid, test) = world_data(1500)

    def run(global_seed, **seed):
        m = build(schema, 0)  # the same initial weights every time: only fit's draws differ
        seed_everything(global_seed)
        fit(m, train, valid, epochs=2, batch_size=128, progress=False, **seed)
        return predict(m, test)

    assert np.array_equal(run(1), run(1))                    # same global seed, same numbers
    assert not np.allclose(run(1), run(2))                   # the global seed alone changes shuffling/dropout
    assert np.array_equal(run(1, seed=5), run(2, seed=5))    # an explicit seed wins over it
    m = build(schema)
    seed_everything(3)
    assert fit(m, train, valid, epochs=1, progress=False).config.seed == 3


def test_device_cpu_and_errors():
    schema, (train, valid, test) = world_data(500)
    m = build(schema)
    fit(m, train, valid, epochs=1, device="cpu", progress=False)
    assert evaluate(m, test, device="cpu").keys() == {"auc", "logloss"}
    assert resolve_device(None, m).type == "cpu" and resolve_device("AUTO").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            fit(m, train, valid, epochs=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda_matches_cpu_and_bf16_autocast_runs():
    schema, (train, valid, test) = world_data()
    cfg = dict(epochs=2, batch_size=256, progress=False, seed=0)
    cpu, gpu = build(schema), build(schema)
    fit(cpu, train, valid, device="cpu", **cfg)
    fit(gpu, train, valid, device="cuda", **cfg)
    assert next(gpu.parameters()).device.type == "cuda"
    p_cpu, p_gpu = predict(cpu, test), predict(gpu, test)              # predict scores where the model is
    assert abs(evaluate(cpu, test)["auc"] - evaluate(gpu, test)["auc"]) < 0.02
    assert np.corrcoef(p_cpu, p_gpu)[0, 1] > 0.9
    bf16 = build(schema)
    r = fit(bf16, train, valid, device="cuda", autocast="bf16", **cfg)
    assert np.isfinite(r.history.train_loss).all() and evaluate(bf16, test)["auc"] > 0.55
    for update in ("sparse", "dense"):                                  # lazy Adam and L2 on the device
        fit(build(schema), train, valid, device="cuda", embedding_update=update, embedding_l2=1e-4,
            grad_clip=10, **cfg)

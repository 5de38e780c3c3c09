"""ctrlib.profiling: interleaved timing samples, the memory probe, and the APG efficiency ladder."""
import pytest
import torch

from ctrlib.profiling import LADDER, apg_ladder, interleaved_ms, measure_layers, peak_memory_mib


def test_interleaved_ms_takes_every_sample_in_turns():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleaved_ms(fns, repeats=3, number=2, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in samples.values() for t in v)
    timed = calls[3:]  # after one warm-up call each, three rounds of two calls per function
    assert timed == list("aabbcc") + list("bbccaa") + list("ccaabb")
    with pytest.raises(ValueError, match="repeats"):
        interleaved_ms(fns, repeats=0)


def test_peak_memory_sees_an_allocation_of_known_size():
    def allocate():
        x = torch.empty(2 ** 20 // 4 * 8)  # 8 MiB of float32
        x.fill_(1.0)
        del x

    assert 8 <= peak_memory_mib(allocate) < 9
    assert peak_memory_mib(lambda: None) < 0.01


def test_ladder_rungs_compute_one_kind_of_layer_and_merging_keeps_the_function():
    torch.manual_seed(0)
    rungs = apg_ladder(12, 10, condition_dim=4, rank=3, overparam=6)
    assert list(rungs) == list(LADDER)
    x, z = torch.randn(5, 12), torch.randn(5, 4)
    for name, layer in rungs.items():
        assert layer(x, z).shape == (5, 10), name
    with torch.no_grad():
        torch.testing.assert_close(rungs["+ over-param, merged"](x, z), rungs["+ over-param, training form"](x, z))
    n = {name: sum(p.numel() for p in layer.parameters()) for name, layer in rungs.items()}
    assert n["+ sharing (APG)"] == n["+ over-param, merged"] < n["+ over-param, training form"]
    assert n["low rank, W materialised"] == n["+ decomposed"]


def test_measure_layers_rows_and_the_memory_order():
    df = measure_layers(widths=(32,), batch_sizes=(64,), condition_dim=4, rank=4, overparam=8, repeats=2)
    assert len(df) == len(LADDER) * 2 and set(df.variant) == set(LADDER)
    first = df.groupby("variant").first()
    # the per-instance W_i of basic APG (64 x 32 x 32 floats) dwarfs the shared rung's activations
    assert first.loc["basic APG", "train_peak_mib"] > 5 * first.loc["+ sharing (APG)", "train_peak_mib"]
    assert first.loc["basic APG", "train_peak_mib"] >= 64 * 32 * 32 * 4 / 2 ** 20
    assert (df.train_ms > 0).all() and (df.infer_ms > 0).all()


def test_memory_probe_is_deterministic_and_can_be_repeated_per_row():
    df = measure_layers(widths=(16,), batch_sizes=(32,), condition_dim=4, rank=2, overparam=4, repeats=3,
                        variants=("regular", "+ sharing (APG)"), memory_repeats=3)
    assert len(df) == 6
    for _, g in df.groupby("variant"):
        assert g.train_peak_mib.nunique() == 1 and g.infer_peak_mib.nunique() == 1

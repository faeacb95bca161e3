"""The comparison's table, the training-FLOP sum and the figures, against hand-computed cases."""

import math

import pytest

import keras_selfish as ks

PNG = b"\x89PNG\r\n\x1a\n"


def metrics(valid, test, active=10, flops=100.0, seconds=60.0):
    return {"valid_ppl": valid, "test_ppl": test, "active_weights": active, "masked_weights": 30, "train_flops": flops, "train_seconds": seconds}


def test_summarize_pools_seeds_in_method_order_with_half_range_and_flops_against_dense():
    results = {
        ("selfish", 2): metrics(110.0, 100.0, flops=40.0),
        ("dense", 1): metrics(90.0, 80.0, active=30, flops=120.0),
        ("selfish", 1): metrics(100.0, 96.0, flops=40.0, seconds=30.0),
    }
    rows = ks.comparison.summarize(results)
    assert [r["method"] for r in rows] == ["dense", "selfish"]  # METHODS order, not insertion order
    selfish = rows[1]
    assert selfish["seeds"] == [1, 2]
    assert selfish["valid_ppl"] == 105.0 and selfish["valid_ppl_spread"] == 5.0
    assert selfish["test_ppl"] == 98.0 and selfish["test_ppl_spread"] == 2.0
    assert math.isclose(selfish["train_flops_vs_dense"], 1 / 3) and selfish["train_seconds"] == 45.0
    table = ks.comparison.markdown_table(rows)
    assert "| selfish | 2 | 105.00 ± 5.00 | 98.00 ± 2.00 | 10 / 30 | 40 | 0.333x | 45 s |" in table
    assert "| dense | 1 | 90.00 | 80.00 | 30 / 30 | 120 | 1.000x | 60 s |" in table
    assert ks.comparison.summarize({("rigl", 1): metrics(1.0, 1.0)})[0]["train_flops_vs_dense"] is None


def test_method_settings_change_only_the_methods_own_settings():
    base = ks.runs.settings("tiny_ptb")
    for method, (changes, _) in ks.comparison.METHODS.items():
        settings = ks.comparison.method_settings(method, base)
        assert {k for k in settings if settings[k] != base[k]} == {k for k, v in changes.items() if base[k] != v}, method
        ks.runs.validate(dict(settings))  # every method is a valid run
    with pytest.raises(ValueError, match="Unknown method 'magic'"):
        ks.comparison.method_settings("magic", base)


def test_train_flops_is_the_trapezoid_over_epochs():
    epochs = [{"train_flops_per_sequence": 6.0}, {"train_flops_per_sequence": 2.0}]
    # 10 batches of 4 sequences per epoch: (10 + 6) / 2 and (6 + 2) / 2 per sequence.
    assert ks.runs.train_flops(epochs, 10, 4, initial=10.0) == 40 * 8.0 + 40 * 4.0


def test_pruning_schedule_and_its_refusal():
    assert ks.runs.pruning_schedule(800) == (100, 600, 25)
    with pytest.raises(ks.runs.RunError, match="at least 8 optimizer steps"):
        ks.runs.pruning_schedule(4)


def record(step, f_density, c_density, change):
    gates = {"i": {"density": 0.3}, "f": {"density": f_density}, "c": {"density": c_density}, "o": {"density": 0.3}}
    return {"step": step, "drop_rate": 0.5 / (1 + step), "topology_change": change,
            "weights": {"lstm/kernel": {"density": 0.3, "gates": gates}, "embedding": {"density": 0.3, "gates": {"all": {"density": 0.3}}}}}


def test_figures_are_written_and_skipped_without_data(tmp_path):
    topology = [record(10, 0.28, 0.32, 0.2), record(20, 0.26, 0.34, 0.3)]
    history = {"epochs": [{"epoch": 1, "val_ppl": 300.0}, {"epoch": 2, "val_ppl": 200.0}], "topology": topology, "initial": record(0, 0.3, 0.3, 0.0)}
    written = ks.plots.run_figures(history, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["gate_density.png", "topology.png", "validation.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    assert ks.plots.gated_matrices(topology) == ["lstm/kernel"]  # the embedding has one "gate"
    static = ks.plots.run_figures({"epochs": history["epochs"], "topology": []}, tmp_path / "static")
    assert [p.name for p in static] == ["validation.png"]
    assert not list(tmp_path.rglob(".*tmp*"))  # written atomically, no temporaries left


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_size": 16, "sparse": False}, "--block_size sets the blocks of the initial sparse masks"),
        ({"block_size": 0}, "--block_size must be >= 1"),
        ({"gmp": True}, "it excludes --sparse"),
        ({"gmp": True, "sparse": False, "density": 1.0}, "give a --density below 1"),
        ({"momentum": 1.0}, "--momentum must be in"),
        ({"blocksize": 16}, "unknown settings"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ks.runs.RunError, match=message):
        ks.runs.settings("tiny_ptb", overrides)

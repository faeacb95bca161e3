"""GradualMagnitudePruning: tfmot's polynomial schedule, magnitude order, monotone masks."""

import numpy as np
import pytest

import keras_selfish as ks
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import MaskInvariant
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


def test_prunes_on_the_polynomial_schedule_to_the_final_sparsity():
    x, y = tokens(batches=10)
    model = compile_lm(tiny_lm(density=1.0))
    pruning = ks.callbacks.GradualMagnitudePruning(0.8, begin_step=2, end_step=18, frequency=4, verbose=0)
    invariant = MaskInvariant()
    previous = {}

    class Monotone(MaskInvariant):
        def on_train_batch_end(self, batch, logs=None):
            for mw in ks.sparsity.collect(self.model):
                mask = mw.mask.numpy()
                if mw.name in previous:
                    assert np.all(mask <= previous[mw.name])  # pruned weights never come back
                previous[mw.name] = mask

    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[pruning, invariant, Monotone()], verbose=0)
    steps = [r["step"] for r in pruning.history]
    assert steps == [4, 8, 12, 16]
    for record in pruning.history:
        s = record["target_sparsity"]
        progress = min(1.0, (record["step"] - 2) / 16)
        np.testing.assert_allclose(s, 0.8 * (1 - (1 - progress) ** 3), rtol=1e-5)
        for mw in ks.sparsity.collect(model):
            assert record["weights"][mw.name]["active"] == round((1 - s) * mw.size)
    assert max(invariant.worst) == 0.0


def test_pruning_removes_the_smallest_magnitudes():
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(density=1.0, layers=1))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    weights = ks.sparsity.collect(model)
    values = [mw.variable.numpy().copy() for mw in weights]
    pruning = ks.callbacks.GradualMagnitudePruning(0.5, begin_step=0, end_step=4, frequency=1, verbose=0)
    pruning.set_model(model)
    pruning.params = {"epochs": 1, "steps": 4}
    pruning.on_train_begin()
    pruning.on_epoch_begin(0)
    pruning.update(4)
    for mw, before in zip(weights, values):
        kept = mw.mask.numpy() != 0
        assert kept.sum() == round(0.5 * mw.size)
        assert np.abs(before[kept]).min() >= np.abs(before[~kept]).max()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"final_sparsity": 1.0}, r"final_sparsity must be in \(0, 1\)"),
        ({"final_sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity"),
        ({"final_sparsity": 0.5, "begin_step": 10, "end_step": 5}, "must be after begin_step"),
        ({"final_sparsity": 0.5, "frequency": 0}, "frequency must be a positive"),
    ],
)
def test_bad_pruning_configurations_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ks.callbacks.GradualMagnitudePruning(**kwargs)

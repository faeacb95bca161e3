"""SNFS (momentum growth) in a plain compile + fit (RigL's probe: test_drop_and_grow.py)."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity import rewire
from keras_selfish.sparsity import topology
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


class Recorder(keras.callbacks.Callback):
    """Copies masks, weights and optimizer momenta of every masked weight at each batch end."""

    def __init__(self):
        super().__init__()
        self.records = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        flat = lambda variable: variable.numpy().reshape(-1)  # noqa: E731
        self.records.append(
            [(flat(mw.mask) != 0, flat(mw.variable), flat(rewire.momentum_slot(optimizer, mw.variable))) for mw in ks.sparsity.collect(self.model)]
        )


def expected_snfs_mask(mask, values, momentum, drop_rate):
    """Magnitude drop, then growth at the free positions of largest |momentum| (ties: lower position)."""
    active = np.flatnonzero(mask)
    k = topology.drop_count(len(active), drop_rate)
    survivors = np.setdiff1d(active, sorted(active, key=lambda i: (abs(values[i]), i))[:k])
    free = np.setdiff1d(np.arange(mask.size), survivors)
    grown = sorted(free, key=lambda i: (-abs(momentum[i]), i))[:k]
    new_mask = np.zeros(mask.size, bool)
    new_mask[np.union1d(survivors, grown)] = True
    return new_mask


@pytest.mark.parametrize(
    "optimizer", [lambda: keras.optimizers.SGD(0.5, momentum=0.9), lambda: keras.optimizers.Adam(0.01)], ids=["sgd_momentum", "adam"]
)
def test_snfs_runs_in_a_plain_fit_and_grows_where_momentum_is_largest(optimizer):
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(layers=1), optimizer())
    assert not model.optimizer.built
    recorder = Recorder()
    callback = ks.callbacks.DropAndGrow(grow="momentum", drop_fraction=0.4, schedule="constant", update_every=2, seed=0, verbose=0)
    # The recorder comes first, so at each batch end it sees what the update scores.
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[recorder, callback], verbose=0)
    assert [r["step"] for r in callback.history] == [2, 4]
    assert int(model.optimizer.iterations.numpy()) == 4
    # Built once, on the model's variables (a second build would add a second set of slots).
    reference = optimizer()
    reference.build(model.trainable_variables)
    assert len(model.optimizer.variables) == len(reference.variables)
    assert all(np.any(momentum != 0) for _, _, momentum in recorder.records[0])
    for (mask, values, momentum), (mask_after, _, _) in zip(recorder.records[1], recorder.records[3]):
        expected = expected_snfs_mask(mask, values, momentum, 0.4)
        np.testing.assert_array_equal(mask_after, expected)
        assert not np.array_equal(mask_after, mask)


def test_snfs_with_sgd_without_momentum_names_the_fix():
    x, y = tokens(batches=2)
    model = compile_lm(tiny_lm(layers=1), keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match=r"SGD keeps no momentum. Use SGD\(momentum=0.9\)"):
        model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[ks.callbacks.DropAndGrow(grow="momentum", verbose=0)], verbose=0)

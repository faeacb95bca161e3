"""Non-finite weights never change the parameter count: rules refuse, callbacks stop updating."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity import fused_update
from keras_selfish.sparsity import topology
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


def _matrix(rng, bad, size=4 * 60):
    values = rng.standard_normal(size).astype("float32")
    mask = (rng.random(size) < 0.5).astype("float32")
    values *= mask
    if bad:  # spread over the gate blocks: NaN, inf, -inf, then NaN
        active = np.flatnonzero(mask)
        values[active[:: len(active) // bad][:bad]] = ([np.nan, np.inf, -np.inf] + [np.nan] * bad)[:bad]
    return values, mask


@pytest.mark.parametrize("drop", ["magnitude", "set"])
@pytest.mark.parametrize("gate_wise", [False, True])
@pytest.mark.parametrize("grow", ["random", "score"])
def test_numpy_rules_refuse_non_finite_weights(drop, gate_wise, grow, rng):
    values, mask = _matrix(rng, bad=5)
    scores = rng.standard_normal(values.size)
    with pytest.raises(topology.NonFiniteValues, match="5 of its .* active weights are NaN or infinite") as error:
        topology.update_matrix(values, mask, 0.3, drop, grow, scores, rng, gate_sections=4, gate_wise=gate_wise)
    assert (error.value.count, error.value.total) == (5, int(mask.sum()))


def test_score_growth_refuses_non_finite_scores(rng):
    values, mask = _matrix(rng, bad=0)
    scores = rng.standard_normal(values.size)
    scores[np.flatnonzero(mask == 0)[:3]] = np.nan
    with pytest.raises(topology.NonFiniteValues, match="3 of its .* growth scores"):
        topology.update_matrix(values, mask, 0.3, grow="score", scores=scores)
    scores[np.flatnonzero(mask == 0)[:3]] = 0.0
    scores[np.flatnonzero(mask)[:3]] = np.nan  # at weights that survive: never a candidate
    dropped, grown = topology.update_matrix(values, mask, 0.01, grow="score", scores=scores)
    assert len(dropped) == len(grown)


@pytest.mark.parametrize("bad", [1, 7])
def test_compiled_rule_refuses_like_the_numpy_rule(bad, rng):
    values, mask = _matrix(rng, bad=bad)
    workspace = fused_update.Workspace(values.size, values.dtype)
    with pytest.raises(topology.NonFiniteValues) as compiled:
        fused_update.magnitude_random(values, mask, 0.3, 0, workspace)
    with pytest.raises(topology.NonFiniteValues) as numpy_rule:
        topology.update_matrix(values, mask, 0.3, rng=rng)
    assert (compiled.value.count, compiled.value.total) == (numpy_rule.value.count, numpy_rule.value.total) == (bad, int(mask.sum()))


def test_pruning_refuses_non_finite_weights(rng):
    values, mask = _matrix(rng, bad=2)
    with pytest.raises(topology.NonFiniteValues):
        topology.magnitude_drop(values, np.flatnonzero(mask), 3)


def _nan_into(model, count=4):
    mw = ks.sparsity.collect(model)[1]
    values = mw.variable.numpy()
    values.reshape(-1)[np.flatnonzero(mw.mask.numpy())[:count]] = np.nan
    mw.variable.assign(values)
    return mw


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"redistribution": "gate_wise"}, {"drop": "set"}, {"grow": "momentum"}],
    ids=["compiled", "gate_wise", "set", "snfs"],
)
def test_update_on_nan_weights_names_the_matrix_and_writes_nothing(kwargs):
    model = compile_lm(tiny_lm())
    x, y = tokens(batches=2)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    updates = ks.callbacks.DropAndGrow(update_every=1, seed=0, verbose=0, **kwargs)
    updates.set_model(model)
    updates.params = {"epochs": 1, "steps": 10}
    updates.on_train_begin()
    updates.on_epoch_begin(0)
    mw = _nan_into(model)
    before = [(w.mask.numpy().copy(), w.variable.numpy().copy()) for w in ks.sparsity.collect(model)]
    with pytest.raises(ValueError, match=f"of {mw.name}: 4 of its {int(mw.mask.numpy().sum()):,} active weights are NaN") as error:
        updates.update(5)
    assert "learning rate" in str(error.value) and "StopOnNaN" in str(error.value)
    for (mask, values), w in zip(before, ks.sparsity.collect(model)):
        np.testing.assert_array_equal(w.mask.numpy(), mask)
        np.testing.assert_array_equal(w.variable.numpy(), values)


class InjectNaN(keras.callbacks.Callback):
    """Writes NaN into active weights after batch `at` (the next loss is NaN)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            _nan_into(self.model)


@pytest.mark.parametrize("update_every", ["epoch", 2])
@pytest.mark.parametrize("diverge", ["nan_weights", "huge_lr"])
def test_no_update_after_the_loss_became_non_finite(update_every, diverge):
    x, y = tokens(batches=8)
    optimizer = keras.optimizers.SGD(1e38 if diverge == "huge_lr" else 0.5, momentum=0.9)  # 1e38: inf loss at step 3
    model = compile_lm(tiny_lm(), optimizer)
    updates = ks.callbacks.DropAndGrow(drop_fraction=0.5, update_every=update_every, seed=0, verbose=0)
    stop = ks.callbacks.StopOnNaN()
    extra = [InjectNaN(at=2)] if diverge == "nan_weights" else []
    counts = [int(mw.mask.numpy().sum()) for mw in ks.sparsity.collect(model)]
    model.fit(x, y, batch_size=BATCH, epochs=3, callbacks=[*extra, updates, stop], verbose=0)
    assert stop.bad_step is not None
    assert all(record["step"] < stop.bad_step for record in updates.history)
    assert [int(mw.mask.numpy().sum()) for mw in ks.sparsity.collect(model)] == counts

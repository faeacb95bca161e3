"""The fused GRU and RHN loops: hand-written BPTT against finite differences and autodiff."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.layers import sparse_rnn
from keras_selfish.layers.fused_gru import gru_loop_reset_after
from keras_selfish.layers.fused_gru import gru_loop_reset_before
from keras_selfish.layers.fused_rhn import rhn_loop
from tests import numpy_reference
from tests.layers.fused_checks import assert_fused_equals_stepped

BATCH, FEATURES, UNITS, DEPTH = 3, 5, 4, 3

# name -> (layer class, kwargs)
FUSED = {
    "gru": (ks.layers.SparseGRU, {"reset_after": True}),
    "gru_reset_before": (ks.layers.SparseGRU, {"reset_after": False}),
    "rhn": (ks.layers.RHN, {"depth": DEPTH, "couple_carry": True}),
    "rhn_uncoupled": (ks.layers.RHN, {"depth": DEPTH, "couple_carry": False}),
}


def _check_finite_differences(loop, inputs, rng):
    head = tf.constant(rng.normal(size=(inputs[0].shape[0], 2, 3)))

    def loss(*args):
        return tf.reduce_sum(loop(*args) * head)

    analytic, numeric = tf.test.compute_gradient(loss, [tf.constant(a) for a in inputs], delta=1e-6)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_loop_gradients_equal_finite_differences(steps, reset_after, rng):
    projected = rng.normal(size=(steps, 2, 3 * 3))
    kernel = rng.normal(size=(3, 3 * 3)) * 0.5
    h0 = rng.normal(size=(2, 3))
    if reset_after:
        inputs, loop = [projected, kernel, rng.normal(size=(3 * 3,)), h0], gru_loop_reset_after
    else:
        inputs, loop = [projected, kernel, h0], gru_loop_reset_before
    _check_finite_differences(loop, inputs, rng)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("couple_carry", [True, False])
def test_rhn_loop_gradients_equal_finite_differences(steps, couple_carry, rng):
    gates = 2 if couple_carry else 3
    kernels = [rng.normal(size=(3, gates * 3)) * 0.5 for _ in range(DEPTH)]
    inputs = [rng.normal(size=(steps, 2, gates * 3)), rng.normal(size=(DEPTH, gates * 3)), rng.normal(size=(2, 3)), *kernels]

    def loop(projected, bias, s0, *kernels):
        return rhn_loop(projected, list(kernels), bias, s0, couple_carry=couple_carry)

    _check_finite_differences(loop, inputs, rng)


def _masked_layer(kind, rng, **kwargs):
    cls, extra = FUSED[kind]
    layer = cls(UNITS, return_sequences=True, return_state=True, **extra, **kwargs)
    layer.build((None, None, FEATURES))
    for v in layer.trainable_variables:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
    for mw in layer.masked_weights:
        mw.mask.assign((rng.random(mw.shape) < 0.4).astype("float32"))
    ks.sparsity.apply_masks(layer)
    return layer


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("kind", list(FUSED))
def test_fused_layer_equals_autodiff_of_the_stepped_cell(kind, go_backwards, rng):
    layer = _masked_layer(kind, rng, go_backwards=go_backwards)
    stepped = keras.layers.RNN(layer.cell, return_sequences=True, return_state=True, go_backwards=go_backwards)
    assert layer.cell.fused_loop(training=True) is not None
    assert_fused_equals_stepped(layer, stepped, rng, states=1, batch=BATCH, features=FEATURES)


@pytest.mark.parametrize("kind", list(FUSED))
def test_stateful_fused_layer_continues_the_sequence(kind, rng):
    cls, extra = FUSED[kind]
    layer = cls(UNITS, return_sequences=True, stateful=True, **extra)
    x = rng.normal(size=(BATCH, 8, FEATURES)).astype("float32")
    layer(x[:, :4])
    for v in layer.trainable_variables:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
    layer.reset_states()
    outputs = np.concatenate([layer(x[:, :4]), layer(x[:, 4:])], 1)
    cell = layer.cell
    if cls is ks.layers.RHN:
        expected, _ = numpy_reference.rhn(x, cell.kernel.numpy(), [k.numpy() for k in cell.recurrent_kernels],
                                          cell.bias.numpy(), cell.couple_carry)
    else:
        ones = np.ones_like
        kernel, recurrent_kernel = cell.kernel.numpy(), cell.recurrent_kernel.numpy()
        expected, _ = numpy_reference.gru(x.astype("float64"), kernel, recurrent_kernel, cell.bias.numpy(),
                                          ones(kernel), ones(recurrent_kernel), reset_after=cell.reset_after)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(FUSED))
def test_fused_loop_only_for_the_standard_cell(kind):
    cls, extra = FUSED[kind]
    cell = cls(UNITS, **extra).cell
    assert cell.fused_loop(training=True) is not None
    assert cls(UNITS, activation="relu", **extra).cell.fused_loop(training=False) is None
    assert cls(UNITS, recurrent_activation="hard_sigmoid", **extra).cell.fused_loop(training=False) is None
    with_recurrent_dropout = cls(UNITS, recurrent_dropout=0.3, **extra).cell
    assert with_recurrent_dropout.fused_loop(training=True) is None
    assert with_recurrent_dropout.fused_loop(training=False) is not None


@pytest.mark.parametrize("kind", list(FUSED))
def test_standard_layer_never_steps_the_generic_loop(kind, monkeypatch, rng):
    def generic_loop(*args, **kwargs):
        raise AssertionError("the generic keras_backend.rnn loop ran")

    cls, extra = FUSED[kind]
    x = rng.normal(size=(2, 5, FEATURES)).astype("float32")
    fused, stepped = cls(UNITS, **extra), cls(UNITS, recurrent_dropout=0.3, **extra)
    monkeypatch.setattr(sparse_rnn.keras_backend, "rnn", generic_loop)
    fused(x, training=True)
    with pytest.raises(AssertionError, match="generic"):
        stepped(x, training=True)


@pytest.mark.parametrize("kind", list(FUSED))
def test_fused_layer_trains_inside_a_jit_compiled_fit_and_masked_weights_stay_zero(kind, rng):
    cls, extra = FUSED[kind]
    model = keras.Sequential([keras.Input((6, FEATURES)), cls(UNITS, **extra), keras.layers.Dense(1)])
    ks.sparsity.initialize(model, density=0.5, seed=0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse", jit_compile=True)
    x = rng.normal(size=(8, 6, FEATURES)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    losses = model.fit(x, y, epochs=5, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    for mw in ks.sparsity.collect(model):
        assert np.all(mw.variable.numpy()[mw.mask.numpy() == 0] == 0)

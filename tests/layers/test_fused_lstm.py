"""The XLA-compiled LSTM loop: hand-written BPTT against finite differences and autodiff."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.layers.fused_lstm import lstm_loop
from tests.layers.fused_checks import assert_fused_equals_stepped

BATCH, FEATURES, UNITS = 3, 5, 4


@pytest.mark.parametrize("steps", [1, 4])
def test_lstm_loop_gradients_equal_finite_differences(steps, rng):
    projected = rng.normal(size=(steps, 2, 4 * 3))
    kernel = rng.normal(size=(3, 4 * 3)) * 0.5
    h0, c0 = rng.normal(size=(2, 2, 3))
    head_outputs = tf.constant(rng.normal(size=(steps, 2, 3)))
    head_cell = tf.constant(rng.normal(size=(2, 3)))

    def loss(projected, kernel, h0, c0):
        outputs, last_cell = lstm_loop(projected, kernel, h0, c0)
        return tf.reduce_sum(outputs * head_outputs) + tf.reduce_sum(last_cell * head_cell)

    inputs = [tf.constant(a) for a in (projected, kernel, h0, c0)]
    analytic, numeric = tf.test.compute_gradient(loss, inputs, delta=1e-6)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-6)


def _masked_layer(rng, **kwargs):
    layer = ks.layers.SparseLSTM(UNITS, return_sequences=True, return_state=True, **kwargs)
    layer.build((None, None, FEATURES))
    for mw in layer.masked_weights:
        mw.mask.assign((rng.random(mw.shape) < 0.4).astype("float32"))
    layer.cell.bias.assign(rng.normal(size=layer.cell.bias.shape).astype("float32"))
    ks.sparsity.apply_masks(layer)
    return layer


@pytest.mark.parametrize("go_backwards", [False, True])
def test_fused_layer_equals_autodiff_of_the_stepped_cell(go_backwards, rng):
    layer = _masked_layer(rng, go_backwards=go_backwards)
    stepped = keras.layers.RNN(layer.cell, return_sequences=True, return_state=True, go_backwards=go_backwards)
    assert layer.cell.fused_loop(training=True) is not None
    assert_fused_equals_stepped(layer, stepped, rng, states=2, batch=BATCH, features=FEATURES)


def test_fused_loop_only_for_the_standard_cell():
    assert ks.layers.SparseLSTMCell(UNITS).fused_loop(training=True) is not None
    assert ks.layers.SparseLSTMCell(UNITS, activation="relu").fused_loop(training=False) is None
    assert ks.layers.SparseLSTMCell(UNITS, recurrent_activation="hard_sigmoid").fused_loop(training=False) is None
    with_recurrent_dropout = ks.layers.SparseLSTMCell(UNITS, recurrent_dropout=0.3)
    assert with_recurrent_dropout.fused_loop(training=True) is None
    assert with_recurrent_dropout.fused_loop(training=False) is not None


def test_fused_layer_trains_inside_a_jit_compiled_fit(rng):
    model = keras.Sequential([keras.Input((6, FEATURES)), ks.layers.SparseLSTM(UNITS), keras.layers.Dense(1)])
    ks.sparsity.initialize(model, density=0.5, seed=0)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
    x = rng.normal(size=(8, 6, FEATURES)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    losses = model.fit(x, y, epochs=5, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0]

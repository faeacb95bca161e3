"""SparseLSTM / SparseGRU: parity with stock Keras, numpy reference, gradients, serialisation."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from tests import numpy_reference

BATCH, STEPS, FEATURES, UNITS = 3, 7, 5, 6

# (sparse layer, stock layer, extra kwargs)
RECURRENT = {
    "lstm": (ks.layers.SparseLSTM, keras.layers.LSTM, {}),
    "gru": (ks.layers.SparseGRU, keras.layers.GRU, {"reset_after": True}),
    "gru_reset_before": (ks.layers.SparseGRU, keras.layers.GRU, {"reset_after": False}),
}


def _pair(kind, **kwargs):
    sparse_cls, stock_cls, extra = RECURRENT[kind]
    return sparse_cls(UNITS, **extra, **kwargs), stock_cls(UNITS, **extra, **kwargs)


def _copy_trainable(src, dst):
    assert len(src.trainable_weights) == len(dst.trainable_weights)
    for s, d in zip(src.trainable_weights, dst.trainable_weights):
        d.assign(s)


def _outputs_and_grads(layer, x, head_seed=0):
    """Flattened outputs and the gradients of a random projection of them."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outs = tf.nest.flatten(layer(x))
        heads = [np.random.default_rng(head_seed + i).normal(size=o.shape).astype("float32") for i, o in enumerate(outs)]
        loss = sum(tf.reduce_sum(o * h) for o, h in zip(outs, heads))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


MODES = list(itertools.product([False, True], [False, True], [False, True]))


@pytest.mark.parametrize("kind", list(RECURRENT))
@pytest.mark.parametrize("return_sequences,return_state,go_backwards", MODES)
def test_all_ones_mask_equals_stock_layer(kind, return_sequences, return_state, go_backwards, rng):
    kwargs = dict(return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards)
    sparse, stock = _pair(kind, **kwargs)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    stock(x)
    sparse(x)
    _copy_trainable(stock, sparse)
    out_stock, grad_stock = _outputs_and_grads(stock, x)
    out_sparse, grad_sparse = _outputs_and_grads(sparse, x)
    assert len(out_stock) == len(out_sparse)
    for a, b in zip(out_stock + grad_stock, out_sparse + grad_sparse):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_stateful_carries_state_like_stock(kind, rng):
    sparse, stock = _pair(kind, stateful=True, return_sequences=True)
    first = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    second = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    stock(first)
    sparse(first)
    _copy_trainable(stock, sparse)
    stock.reset_state()
    sparse.reset_state()
    for batch in (first, second):
        np.testing.assert_allclose(sparse(batch), stock(batch), rtol=1e-5, atol=1e-5)
    sparse.reset_state()
    stock.reset_state()
    np.testing.assert_allclose(sparse(second), stock(second), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_bidirectional_equals_stock(kind, rng):
    sparse_layer, stock_layer = _pair(kind, return_sequences=True)
    sparse = keras.layers.Bidirectional(sparse_layer)
    stock = keras.layers.Bidirectional(stock_layer)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    stock(x)
    sparse(x)
    _copy_trainable(stock, sparse)
    out_stock, grad_stock = _outputs_and_grads(stock, x)
    out_sparse, grad_sparse = _outputs_and_grads(sparse, x)
    for a, b in zip(out_stock + grad_stock, out_sparse + grad_sparse):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert len(ks.sparsity.collect(sparse)) == 4


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_padding_mask_and_unroll_equal_stock(kind, rng):
    ids = rng.integers(1, 9, size=(BATCH, STEPS))
    ids[0, 4:] = 0
    ids[2, 2:] = 0
    for unroll in (False, True):
        sparse_rnn, stock_rnn = _pair(kind, return_sequences=True, unroll=unroll)
        embed = keras.layers.Embedding(10, FEATURES, mask_zero=True)
        x = embed(ids)
        stock = stock_rnn(x, mask=embed.compute_mask(ids))
        sparse_rnn(x)
        _copy_trainable(stock_rnn, sparse_rnn)
        np.testing.assert_allclose(sparse_rnn(x, mask=embed.compute_mask(ids)), stock, rtol=1e-5, atol=1e-5)


def _random_masks(layer, rng, density=0.4):
    for mw in layer.masked_weights:
        mw.mask.assign((rng.random(mw.shape) < density).astype("float32"))
    ks.sparsity.apply_masks(layer)


def test_masked_lstm_equals_numpy_reference(rng):
    layer = ks.layers.SparseLSTM(UNITS, return_sequences=True, return_state=True)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    layer(x)
    _random_masks(layer, rng)
    cell = layer.cell
    outputs, h, c = layer(x)
    ref = numpy_reference.lstm(
        x.astype("float64"), cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy(),
        cell.kernel_mask.numpy(), cell.recurrent_kernel_mask.numpy(),
    )
    for got, want in zip((outputs, h, c), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The standalone cell in a stock RNN wrapper computes the same recurrence.
    wrapped = keras.layers.RNN(cell, return_sequences=True)
    np.testing.assert_allclose(wrapped(x), ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_masked_gru_equals_numpy_reference(reset_after, rng):
    layer = ks.layers.SparseGRU(UNITS, return_sequences=True, reset_after=reset_after, bias_initializer="random_normal")
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    layer(x)
    _random_masks(layer, rng)
    cell = layer.cell
    ref, _ = numpy_reference.gru(
        x.astype("float64"), cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy(),
        cell.kernel_mask.numpy(), cell.recurrent_kernel_mask.numpy(), reset_after=reset_after,
    )
    np.testing.assert_allclose(layer(x), ref, rtol=1e-5, atol=1e-5)
    wrapped = keras.layers.RNN(cell, return_sequences=True)
    np.testing.assert_allclose(wrapped(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(RECURRENT))
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_inactive_weights_stay_exactly_zero_during_fit(kind, optimizer, rng):
    layer, _ = _pair(kind, return_sequences=True)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), layer, keras.layers.Dense(1)])
    ks.sparsity.initialize(model, density=0.3, seed=3)
    x = rng.normal(size=(16, STEPS, FEATURES)).astype("float32")
    y = rng.normal(size=(16, STEPS, 1)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = dict(zip([v.path for v in model.trainable_weights], tape.gradient(loss, model.trainable_weights)))
    for mw in layer.masked_weights:
        # The gradient of an inactive weight is the dense gradient (as in the reference code) ...
        assert np.any(grads[mw.variable.path].numpy()[mw.mask.numpy() == 0] != 0)
    opt = keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd_momentum" else keras.optimizers.Adam(0.05)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, epochs=3, batch_size=4, verbose=0)
    for mw in layer.masked_weights:
        # ... but it never moves the weight: inactive weights stay exactly zero.
        inactive = mw.mask.numpy() == 0
        assert inactive.any()
        assert np.all(mw.variable.numpy()[inactive] == 0)
        assert np.any(mw.variable.numpy()[~inactive] != 0)


def test_dropout_is_active_only_in_training(rng):
    layer = ks.layers.SparseLSTM(UNITS, dropout=0.5, recurrent_dropout=0.5, seed=1, return_sequences=True)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    inference = layer(x, training=False)
    np.testing.assert_allclose(layer(x, training=False), inference)
    assert not np.allclose(layer(x, training=True), inference)
    stock = keras.layers.LSTM(UNITS, return_sequences=True)
    stock(x)
    _copy_trainable(layer, stock)
    np.testing.assert_allclose(inference, stock(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_keras_file_round_trip_is_bit_exact(kind, tmp_path, rng):
    layer, _ = _pair(kind, return_sequences=True, dropout=0.1)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Bidirectional(layer), ks.layers.MaskedDense(3)])
    ks.sparsity.initialize(model, density=0.5, seed=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    np.testing.assert_array_equal(model(x), loaded(x))
    assert len(ks.sparsity.collect(loaded)) == len(ks.sparsity.collect(model)) == 5
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


def test_gate_layout_is_declared():
    lstm = ks.layers.SparseLSTM(UNITS)
    gru = ks.layers.SparseGRU(UNITS)
    lstm.build((None, STEPS, FEATURES))
    gru.build((None, STEPS, FEATURES))
    assert [(m.num_gates, m.gate_names) for m in lstm.masked_weights] == [(4, ("i", "f", "c", "o"))] * 2
    assert [(m.num_gates, m.gate_names) for m in gru.masked_weights] == [(3, ("z", "r", "h"))] * 2
    assert lstm.masked_weights[0].shape == (FEATURES, 4 * UNITS)

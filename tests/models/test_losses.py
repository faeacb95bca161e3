"""ks.losses.SparseSoftmaxCrossEntropy against numpy and stock Keras's sparse categorical cross-entropy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks

B, T, V = 3, 4, 11


def batch(scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)).astype("int32"), (scale * rng.standard_normal((B, T, V))).astype("float32")


def numpy_xent(labels, logits):
    z = logits.astype("float64") - logits.max(-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    loss = -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    gradient = np.exp(log_softmax) - np.eye(V)[labels]
    return loss, gradient


@pytest.mark.parametrize("scale", [3.0, 200.0])
def test_loss_and_gradient_equal_numpy_per_position(scale):
    labels, logits = batch(scale)
    logits = tf.constant(logits)
    upstream = tf.constant(np.random.default_rng(1).standard_normal((B, T)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = ks.losses.sparse_softmax_cross_entropy(labels, logits)
    gradient = tape.gradient(loss, logits, output_gradients=upstream)
    want_loss, want_gradient = numpy_xent(labels, logits.numpy())
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), want_gradient * upstream.numpy()[..., None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trailing_one", [False, True])
def test_equals_stock_keras_loss_with_sample_weights(trailing_one):
    labels, logits = batch()
    weights = np.random.default_rng(2).uniform(0, 1, (B, T)).astype("float32")
    y = labels[..., None] if trailing_one else labels
    logits = tf.constant(logits)
    values = {}
    for name, loss in (("stock", keras.losses.SparseCategoricalCrossentropy(from_logits=True)), ("ks", ks.losses.SparseSoftmaxCrossEntropy())):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(y, logits, sample_weight=weights)
        values[name] = (value.numpy(), tape.gradient(value, logits).numpy())
    np.testing.assert_allclose(values["ks"][0], values["stock"][0], rtol=1e-6)
    np.testing.assert_allclose(values["ks"][1], values["stock"][1], rtol=1e-5, atol=1e-8)


def lm(loss):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T,), batch_size=B, dtype="int32"), ks.layers.MaskedEmbedding(V, 5),
                              ks.layers.SparseLSTM(6, return_sequences=True), ks.layers.MaskedDense(V)])
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(keras.optimizers.SGD(0.5, global_clipnorm=0.25), loss)
    return model


def test_fit_trains_the_weights_stock_keras_trains():
    labels, _ = batch()
    targets = np.roll(labels, 1, axis=1)
    stock, fast = lm(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), lm(ks.losses.SparseSoftmaxCrossEntropy())
    histories = [m.fit(labels, targets, batch_size=B, epochs=4, verbose=0).history["loss"] for m in (stock, fast)]
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-6)
    for a, b in zip(stock.get_weights(), fast.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for mw in ks.sparsity.collect(fast):
        assert np.all(mw.variable.numpy()[mw.mask.numpy() == 0] == 0)


def test_serialises_in_a_saved_model(tmp_path):
    loss = ks.losses.SparseSoftmaxCrossEntropy(reduction="sum", name="xent")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, ks.losses.SparseSoftmaxCrossEntropy) and again.get_config() == loss.get_config()
    model = lm(loss)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    labels, _ = batch()
    assert loaded.evaluate(labels, labels, verbose=0) == pytest.approx(model.evaluate(labels, labels, verbose=0), rel=1e-6)

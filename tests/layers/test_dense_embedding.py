"""MaskedDense and MaskedEmbedding: parity with stock layers, masking, serialisation."""

import keras
import numpy as np
import tensorflow as tf

import keras_selfish as ks


def test_masked_dense_equals_stock_dense_and_numpy(rng):
    x = rng.normal(size=(4, 3, 5)).astype("float32")
    sparse = ks.layers.MaskedDense(7, activation="relu", bias_initializer="random_normal")
    stock = keras.layers.Dense(7, activation="relu")
    sparse(x)
    stock(x)
    stock.set_weights([sparse.kernel.numpy(), sparse.bias.numpy()])
    np.testing.assert_allclose(sparse(x), stock(x), rtol=1e-6)
    sparse.kernel_mask.assign((rng.random((5, 7)) < 0.4).astype("float32"))
    ks.sparsity.apply_masks(sparse)
    w = sparse.kernel.numpy()
    assert np.all(w[sparse.kernel_mask.numpy() == 0] == 0)
    expected = np.maximum(x @ w + sparse.bias.numpy(), 0)
    np.testing.assert_allclose(sparse(x), expected, rtol=1e-5, atol=1e-6)


def test_masked_embedding_equals_stock_and_keeps_sparse_gradient(rng):
    ids = rng.integers(0, 11, size=(3, 4))
    sparse = ks.layers.MaskedEmbedding(11, 5, mask_zero=True)
    stock = keras.layers.Embedding(11, 5, mask_zero=True)
    sparse(ids)
    stock(ids)
    stock.embeddings.assign(sparse.embeddings)
    np.testing.assert_array_equal(sparse(ids), stock(ids))
    np.testing.assert_array_equal(sparse.compute_mask(ids), stock.compute_mask(ids))
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(sparse(ids))
    assert isinstance(tape.gradient(out, sparse.embeddings), tf.IndexedSlices)


def test_masked_layers_round_trip_through_keras_file(tmp_path, rng):
    model = keras.Sequential(
        [keras.Input((4,), dtype="int32"), ks.layers.MaskedEmbedding(11, 5), ks.layers.MaskedDense(6, activation="tanh")]
    )
    ks.sparsity.initialize(model, 0.4, seed=2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ids = rng.integers(0, 11, size=(2, 4))
    np.testing.assert_array_equal(model(ids), loaded(ids))
    assert [mw.name.split("/")[-1] for mw in ks.sparsity.collect(loaded)] == ["embeddings", "kernel"]

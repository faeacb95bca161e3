"""SNT-ASGD's fused one-device `apply` against Keras's own `apply` (the path it takes under a strategy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.optimizers.sntasgd import squared_norm
from keras_selfish.optimizers.sntasgd import summed_rows

B, T, V, D, U = 4, 3, 7, 5, 6


def build(momentum=None, constraints=False):
    """Embedding (its gradient: IndexedSlices with repeated ids) -> pooling -> Dense, sparse, SNT-ASGD with decay and clipping."""
    kwargs = {"kernel_constraint": keras.constraints.MaxNorm(0.3), "bias_constraint": keras.constraints.NonNeg()} if constraints else {}
    model = keras.Sequential(
        [
            keras.Input((T,), batch_size=B, dtype="int32"),
            ks.layers.MaskedEmbedding(V, D),
            keras.layers.GlobalAveragePooling1D(),
            ks.layers.MaskedDense(U, **kwargs),
        ]
    )
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(ks.optimizers.SNTASGD(0.5, weight_decay=0.01, global_clipnorm=0.2, gradient_momentum=momentum), "mse")
    return model


def train(model, batches, start_averaging_at):
    for step, (x, y) in enumerate(batches):
        if step == start_averaging_at:
            model.optimizer.start_averaging()
        model.train_on_batch(x, y)
    optimizer = model.optimizer
    state = [v.numpy() for v in model.trainable_variables]
    state += [a.numpy() for a in optimizer._averages] + [c.numpy() for c in optimizer._counts]
    return state + ([m.numpy() for m in optimizer.momentums] if optimizer.gradient_momentum else [])


@pytest.mark.parametrize("momentum, constraints", [(None, False), (0.9, True)])
def test_fused_steps_equal_keras_apply_under_a_strategy(momentum, constraints):
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, V, (B, T)).astype("int32"), rng.normal(size=(B, U)).astype("float32")) for _ in range(12)]
    fused = build(momentum, constraints)
    with tf.distribute.OneDeviceStrategy("CPU:0").scope():  # Keras's apply, update_step, exact_gradient_clipping
        keras_path = build(momentum, constraints)
    keras_path.set_weights(fused.get_weights())
    for a, b in zip(train(fused, batches, 5), train(keras_path, batches, 5)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)  # the same operations, fused: float rounding
    masks = [mw.mask.numpy() for mw in ks.sparsity.collect(fused)]
    for variable, mask in zip(fused.trainable_variables, masks):
        assert np.all(variable.numpy()[mask == 0] == 0)
    if constraints:
        bias = fused.layers[-1].bias.numpy()
        assert np.all(bias >= 0) and np.any(bias == 0)  # NonNeg ran after the fused step


def test_one_device_steps_do_not_run_keras_apply(monkeypatch):
    calls = []
    keras_apply = keras.optimizers.Optimizer.apply
    monkeypatch.setattr(keras.optimizers.Optimizer, "apply", lambda self, *a, **k: calls.append(1) or keras_apply(self, *a, **k))
    model = build()
    model.train_on_batch(np.zeros((B, T), "int32"), np.ones((B, U), "float32"))
    assert calls == []
    clipping_each = build()
    clipping_each.compile(ks.optimizers.SNTASGD(0.5, clipnorm=0.2), "mse")  # per-tensor clipping: Keras's apply
    clipping_each.train_on_batch(np.zeros((B, T), "int32"), np.ones((B, U), "float32"))
    assert calls  # (counted when the step is traced)


def test_summed_rows_sum_to_the_dense_gradient_with_its_norm():
    rng = np.random.default_rng(1)
    ids = np.array([3, 1, 3, 0, 3, 1], "int32")
    values = rng.normal(size=(len(ids), D)).astype("float32")
    rows, indices = summed_rows(tf.IndexedSlices(tf.constant(values), tf.constant(ids), tf.constant([V, D])), V)
    dense = np.zeros((V, D), "float32")
    np.add.at(dense, ids, values)
    rebuilt = np.zeros((V, D), "float32")
    np.add.at(rebuilt, indices.numpy(), rows.numpy())
    np.testing.assert_allclose(rebuilt, dense, rtol=1e-6)
    np.testing.assert_array_equal(rows.numpy()[[2, 4, 5]], 0)  # later occurrences are zero
    np.testing.assert_allclose(float(squared_norm(rows)), (dense.astype(np.float64) ** 2).sum(), rtol=1e-6)


def test_a_non_finite_gradient_makes_the_step_nan_as_keras_clipping_does():
    model = build()
    variables = model.trainable_variables
    grads = [tf.fill(v.shape, np.inf) for v in variables]
    model.optimizer.apply(grads, variables)
    assert all(np.all(np.isnan(v.numpy())) for v in variables)


def test_a_missing_gradient_warns_as_keras_does_and_leaves_its_variable_alone():
    model = build()
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    grads = [tf.ones(v.shape) for v in variables[:-1]] + [None]
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        model.optimizer.apply(grads, variables)
    np.testing.assert_array_equal(variables[-1].numpy(), before[-1])
    assert not np.array_equal(variables[0].numpy(), before[0])  # the others stepped

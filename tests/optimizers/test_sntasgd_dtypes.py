"""SNT-ASGD dtypes: float flags and counters (XLA/GPU placement), 16-bit weights, mixed precision."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def masked_dense(dtype=None, units=3, inputs=4):
    """A model with one masked kernel (half of it active) and a dense bias."""
    model = keras.Sequential([keras.Input((inputs,), dtype=dtype), ks.layers.MaskedDense(units, dtype=dtype)])
    ks.sparsity.initialize(model, 0.5, seed=0)
    return model


def reference_average(snapshots):
    """What the equations give with `t0 = 0`: the arithmetic mean of the weights after
    averaged steps 2..N (step 1 sets `ax = w`, step 2 sets it again, then `mu = 1/(n - 1)`)."""
    return np.mean(np.asarray(snapshots[1:], np.float64), axis=0)


def test_float16_weights_count_past_2048_steps_and_average_exactly():
    model = masked_dense("float16")
    kernel, bias = model.trainable_variables
    mask = ks.sparsity.collect(model)[0].mask.numpy() != 0
    model.compile(ks.optimizers.SNTASGD(0.01), "mse")
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    optimizer.start_averaging()
    rng = np.random.default_rng(0)
    steps = 2100
    gradients = [rng.normal(size=(steps, *v.shape)).astype("float16") for v in (kernel, bias)]
    apply = tf.function(lambda g_kernel, g_bias: optimizer.apply([g_kernel, g_bias], [kernel, bias]))
    snapshots = {"kernel": [], "bias": []}
    for step in range(steps):
        apply(gradients[0][step], gradients[1][step])
        snapshots["kernel"].append(kernel.numpy())
        snapshots["bias"].append(bias.numpy())
    assert kernel.dtype == "float16"
    averages = {id(v): a for v, a in optimizer.averages()}
    counts = optimizer._counts
    # Exact counters: per element for the masked kernel (0 where inactive), one for the bias.
    np.testing.assert_array_equal(counts[0].numpy(), np.where(mask, float(steps), 0.0))
    assert float(counts[1].numpy()) == steps
    for variable, name in ((kernel, "kernel"), (bias, "bias")):
        assert averages[id(variable)].dtype == "float32"
        np.testing.assert_allclose(averages[id(variable)].numpy(), reference_average(snapshots[name]), rtol=2e-6, atol=1e-6)
    # The float32 average swaps into the float16 weight (rounded) and the raw weight comes back.
    raw = kernel.numpy()
    with ks.optimizers.averaged_weights(model) as swapped:
        assert swapped
        np.testing.assert_array_equal(kernel.numpy(), averages[id(kernel)].numpy().astype("float16"))
    np.testing.assert_array_equal(kernel.numpy(), raw)


def test_under_mixed_float16_the_wrapped_optimizer_averages_and_swaps(mixed_float16):
    model = keras.Sequential([keras.Input((5,), dtype="int32"), ks.layers.MaskedEmbedding(7, 4), keras.layers.GlobalAveragePooling1D(), ks.layers.MaskedDense(3)])
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(ks.optimizers.SNTASGD(0.5), "mse")  # jit_compile="auto"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    assert isinstance(inner, ks.optimizers.SNTASGD)
    rng = np.random.default_rng(1)
    batch = lambda: (rng.integers(0, 7, (8, 5)).astype("int32"), rng.normal(size=(8, 3)).astype("float32"))  # noqa: E731
    for _ in range(3):
        model.train_on_batch(*batch())
    inner.start_averaging()
    snapshots, applied = [], int(inner.iterations.numpy())
    for _ in range(30):
        model.train_on_batch(*batch())
        if int(inner.iterations.numpy()) > applied:  # the loss scale skips non-finite steps
            applied += 1
            snapshots.append([v.numpy() for v in model.trainable_variables])
    assert len(snapshots) >= 25 and all(v.dtype == "float32" for v in model.trainable_variables)
    averages = {id(v): a.numpy() for v, a in inner.averages()}
    for i, variable in enumerate(model.trainable_variables):
        np.testing.assert_allclose(averages[id(variable)], reference_average([s[i] for s in snapshots]), rtol=1e-5, atol=1e-6)
    raw = [v.numpy() for v in model.trainable_variables]
    with ks.optimizers.averaged_weights(model) as swapped:
        assert swapped
        for variable in model.trainable_variables:
            np.testing.assert_array_equal(variable.numpy(), averages[id(variable)])
    for variable, value in zip(model.trainable_variables, raw):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_every_variable_the_update_step_reads_is_a_float_or_the_int64_step(dtype):
    # TensorFlow keeps int32 variables in host memory, which an XLA cluster on a GPU
    # cannot read; the flag, averages and counters must be floats.
    model = masked_dense(dtype)
    optimizer = ks.optimizers.SNTASGD(0.1)
    optimizer.build(model.trainable_variables)
    optimizer.start_averaging()
    gradients = [tf.ones_like(v) for v in model.trainable_variables]
    step = tf.function(lambda: optimizer.apply(gradients, model.trainable_variables), autograph=False)
    read = {v.name: v.dtype for v in step.get_concrete_function().variables}
    assert "sntasgd/averaging:0" in read
    assert {d for name, d in read.items() if name != "sntasgd/iteration:0"} <= {tf.float16, tf.float32, tf.float64}
    assert read["sntasgd/iteration:0"] == tf.int64
    assert optimizer._averaging.dtype == "float32"
    accumulators = [*optimizer._counts, *(a for _, a in optimizer.averages())]
    assert {v.dtype for v in accumulators} == {"float64" if dtype == "float64" else "float32"}


def test_checkpoint_with_the_old_int32_flag_loads(tmp_path):
    def compiled():
        model = masked_dense()
        model.compile(ks.optimizers.SNTASGD(0.1), "mse")
        model.optimizer.build(model.trainable_variables)
        return model

    compiled().save_weights(tmp_path / "old.weights.h5")
    flag = [v.path for v in compiled().optimizer.variables].index("sntasgd/averaging")
    with h5py.File(tmp_path / "old.weights.h5", "r+") as f:  # as versions with an int32 flag wrote it
        del f[f"optimizer/vars/{flag}"]
        f[f"optimizer/vars/{flag}"] = np.int32(1)
    model = compiled()
    model.load_weights(tmp_path / "old.weights.h5")
    assert model.optimizer.averaging and model.optimizer._averaging.dtype == "float32"

"""Writing a topology change: in variables' own memory or by TensorFlow ops, same result."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.sparsity import in_place
from keras_selfish.sparsity.rewire import Change
from keras_selfish.sparsity.rewire import optimizer_slots
from keras_selfish.sparsity.rewire import rewire


def test_buffer_is_the_variables_memory():
    variable = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    buffer = in_place.buffer_of(variable)
    buffer.array[4] = -1.0
    del buffer
    np.testing.assert_array_equal(variable.numpy(), [[0, 1, 2], [3, -1, 5]])


def test_no_buffer_where_reads_do_not_alias():
    copy_on_read = tf.Variable(np.ones(4, "float32"))
    copy_on_read.sparse_read([0])  # sparse access switches the variable to copy-on-read
    assert in_place.buffer_of(copy_on_read) is None
    assert in_place.buffer_of(tf.Variable(np.ones(4, "float16"))) is None
    assert in_place.buffer_of(tf.Variable(np.ones(4, "int32"))) is None
    with tf.distribute.MirroredStrategy(["CPU:0"]).scope():
        mirrored = tf.Variable(np.ones(4, "float32"))
    assert in_place.buffer_of(mirrored) is None


def _model_with_state(optimizer, rng):
    model = keras.Sequential([keras.Input((2, 3)), ks.layers.SparseLSTM(4), ks.layers.MaskedDense(5)])
    ks.sparsity.initialize(model, 0.4, seed=1)
    model.compile(optimizer, "mse")
    model.optimizer.build(model.trainable_variables)
    for mw in ks.sparsity.collect(model):
        mw.variable.assign(rng.standard_normal(mw.shape).astype("float32") * mw.mask.numpy())
        for slot in optimizer_slots(model.optimizer, mw.variable):
            slot.assign(rng.standard_normal(mw.shape).astype("float32"))  # nonzero everywhere
    return model


@pytest.mark.parametrize(
    "optimizer, expected_slots",
    [
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), ["momentum"]),
        (keras.optimizers.Adam, ["momentum", "velocity"]),
        (ks.optimizers.SNTASGD, ["average", "count"]),
    ],
    ids=["sgd_momentum", "adam", "sntasgd"],
)
@pytest.mark.parametrize("aliased", [True, False])
def test_rewire_matches_numpy(optimizer, expected_slots, aliased, rng):
    model = _model_with_state(optimizer(), rng)
    for mw in ks.sparsity.collect(model):
        slots = optimizer_slots(model.optimizer, mw.variable)
        assert [slot.name.rsplit("_", 1)[-1] for slot in slots] == expected_slots, mw.name
        variables = [mw.mask, mw.variable, *slots]
        if not aliased:  # force the TensorFlow path
            for v in variables:
                v.value.sparse_read([0])
        assert all((in_place.buffer_of(v) is not None) == aliased for v in variables)
        mask = mw.mask.numpy() != 0
        slot_values = [s.numpy() for s in slots]
        values = mw.variable.numpy()
        values[mask & (rng.random(mw.shape) < 0.3)] = np.nan  # dropped NaN weights become 0
        mw.variable.assign(values)
        survivors = mask & (rng.random(mw.shape) < 0.5)
        new_mask = survivors | (rng.random(mw.shape) < 0.3)
        rewire(mw, Change(survivors, new_mask, 0, 0), model.optimizer)
        np.testing.assert_array_equal(mw.mask.numpy(), new_mask.astype("float32"))
        np.testing.assert_array_equal(mw.variable.numpy(), np.where(survivors, values, 0))
        for slot, before in zip(slots, slot_values):
            np.testing.assert_array_equal(slot.numpy(), np.where(survivors, before, 0))

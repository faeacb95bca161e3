"""In-place rewrites reach only the rewritten variable, whoever shared its buffer.

TensorFlow's `b.assign(a)` makes `b` adopt `a`'s buffer (checked first below), so a
write into `b`'s memory that skipped the ownership step would change `a` too.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.sparsity import in_place
from keras_selfish.sparsity.rewire import Change
from keras_selfish.sparsity.rewire import optimizer_slots
from keras_selfish.sparsity.rewire import rewire
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens

VARIABLES = {"keras": keras.Variable, "tf": tf.Variable}


def address(variable):
    backing = variable if isinstance(variable, tf.Variable) else variable.value
    return np.asarray(tf.convert_to_tensor(backing)).ctypes.data


@pytest.mark.parametrize("kind", list(VARIABLES))
def test_assign_shares_the_buffer_and_in_place_writes_do_not_leak(kind):
    make = VARIABLES[kind]
    a = make(np.arange(1, 7, dtype="float32"))
    b = make(np.zeros(6, "float32"))
    b.assign(a)
    assert address(a) == address(b)  # what makes the ownership step necessary
    buffer = in_place.buffer_of(b)
    in_place.keep_survivors(np.array([True, False] * 3), buffer.array)
    del buffer
    np.testing.assert_array_equal(a.numpy(), np.arange(1, 7))
    np.testing.assert_array_equal(b.numpy(), [1, 0, 3, 0, 5, 0])
    assert address(a) != address(b)


def test_live_tensor_of_a_variable_keeps_its_values():
    variable = keras.Variable(np.arange(1, 5, dtype="float32"))
    held = tf.convert_to_tensor(variable.value)  # a read, kept alive
    buffer = in_place.buffer_of(variable)
    in_place.write_mask(np.zeros(4, bool), buffer.array)
    del buffer
    np.testing.assert_array_equal(np.asarray(held), [1, 2, 3, 4])
    np.testing.assert_array_equal(variable.numpy(), [0, 0, 0, 0])


def test_owned_buffer_is_not_copied():
    variable = keras.Variable(np.arange(1, 5, dtype="float32"))
    in_place.buffer_of(variable)
    before = address(variable)
    buffer = in_place.buffer_of(variable)
    assert buffer.array.ctypes.data == before == address(variable)
    del buffer
    assert in_place._reads_alias(variable.value)  # the variable is back out of copy-on-read mode


def _model(seed):
    model = keras.Sequential([keras.Input((2, 3)), ks.layers.SparseLSTM(4), ks.layers.MaskedDense(5)])
    ks.sparsity.initialize(model, 0.4, seed=seed)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _state(model):
    variables = model.weights + model.optimizer.variables
    return [v.numpy().copy() for v in variables]


def test_rewire_of_a_copied_model_leaves_the_source_alone(rng):
    source, copy = _model(seed=1), _model(seed=2)
    for mw in ks.sparsity.collect(source):
        for slot in optimizer_slots(source.optimizer, mw.variable):
            slot.assign(rng.standard_normal(mw.shape).astype("float32"))
    for to, frm in zip(copy.weights + copy.optimizer.variables, source.weights + source.optimizer.variables):
        to.assign(frm)  # weights, masks and momenta copied by assignment: buffers shared
    before = _state(source)
    for mw in ks.sparsity.collect(copy):
        survivors = (mw.mask.numpy() != 0) & (rng.random(mw.shape) < 0.5)
        rewire(mw, Change(survivors, survivors | (rng.random(mw.shape) < 0.2), 0, 0), copy.optimizer)
        np.testing.assert_array_equal(mw.variable.numpy()[~survivors], 0)
    for value, expected in zip(_state(source), before):
        np.testing.assert_array_equal(value, expected)


def test_rewire_inside_averaged_weights_leaves_the_averages_alone(rng):
    model = keras.Sequential([keras.Input((3,)), ks.layers.MaskedDense(4)])
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(ks.optimizers.SNTASGD(0.1), "mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.start_averaging()
    (mw,) = ks.sparsity.collect(model)
    average = dict((id(v), a) for v, a in model.optimizer.averages())[id(mw.variable)]
    average.assign(rng.standard_normal(mw.shape).astype("float32"))
    expected = average.numpy().copy()
    with ks.optimizers.averaged_weights(model) as swapped:
        assert swapped and address(mw.variable) == address(average)  # the swap shares buffers
        rewire(mw, Change(np.zeros(mw.shape, bool), mw.mask.numpy() != 0, 0, 0))  # the weight only
        np.testing.assert_array_equal(mw.variable.numpy(), 0)
    np.testing.assert_array_equal(average.numpy(), expected)


def test_fit_with_drop_and_grow_on_a_copied_model_leaves_the_source_alone():
    x, y = tokens(batches=6)
    source = compile_lm(tiny_lm(seed=0))
    source.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # momenta exist and are nonzero
    copy = compile_lm(tiny_lm(seed=1))
    copy.optimizer.build(copy.trainable_variables)
    for to, frm in zip(copy.weights + copy.optimizer.variables, source.weights + source.optimizer.variables):
        to.assign(frm)
    before = _state(source)
    updates = ks.callbacks.DropAndGrow(drop_fraction=0.5, update_every=2, seed=0, verbose=0)
    copy.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[updates], verbose=0)
    assert len(updates.history) == 3 and updates.history[-1]["topology_change"] > 0
    for value, expected in zip(_state(source), before):
        np.testing.assert_array_equal(value, expected)

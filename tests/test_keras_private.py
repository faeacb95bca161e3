"""The private Keras APIs wrapped in `keras_selfish.keras_private` still behave as relied on."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selfish import keras_private
from keras_selfish import model_state


def test_flatten_layers_reaches_cells_wrappers_and_nested_models():
    inner = keras.Sequential([keras.Input((3, 4)), keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True))], name="inner")
    model = keras.Sequential([keras.Input((3, 4)), inner, keras.layers.TimeDistributed(keras.layers.Dense(5))])
    layers = keras_private.flatten_layers(model)
    names = [type(layer).__name__ for layer in layers]
    assert layers[0] is model
    assert names.count("LSTMCell") == 2  # both directions' cells
    assert "Dense" in names and "Bidirectional" in names and "Sequential" in names[1:]
    assert keras_private.flatten_layers(model, include_self=False)[0] is not model
    assert len({id(layer) for layer in layers}) == len(layers)


def test_variable_index_matches_the_optimizer_slot_lists():
    variables = [keras.Variable(np.zeros((2, 3)), name="a"), keras.Variable(np.zeros(4), name="b")]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    for i, v in enumerate(variables):
        assert keras_private.variable_index(optimizer, v) == i
        assert tuple(optimizer.momentums[keras_private.variable_index(optimizer, v)].shape) == tuple(v.shape)
    with pytest.raises(KeyError):
        keras_private.variable_index(optimizer, keras.Variable(np.zeros(1)))


def test_rnn_states_and_reset_cover_every_stateful_layer():
    model = keras.Sequential([
        keras.Input((3, 4), batch_size=2),
        keras.layers.LSTM(5, stateful=True, return_sequences=True),
        keras.layers.GRU(6, stateful=True),
    ])
    model(np.ones((2, 3, 4), "float32"))
    states = model_state.rnn_states(model)
    assert [tuple(s.shape) for s in states] == [(2, 5), (2, 5), (2, 6)]
    assert all(np.abs(keras.ops.convert_to_numpy(s)).sum() > 0 for s in states)
    model_state.reset_rnn_states(model)
    assert all(np.abs(keras.ops.convert_to_numpy(s)).sum() == 0 for s in states)


def test_per_replica_states_are_plain_carried_variables_outside_a_strategy():
    import keras_selfish as ks

    model = keras.Sequential([keras.Input((3, 4), batch_size=2), ks.layers.SparseLSTM(5, stateful=True)])
    model(np.ones((2, 3, 4), "float32"))
    states = model_state.rnn_states(model)
    assert [tuple(s.shape) for s in states] == [(2, 5), (2, 5)]
    assert not {id(s) for s in states} & {id(w) for w in model.weights}  # carried, not saved as weights
    values = model_state.carried_values(model)
    assert all(np.abs(v).sum() > 0 for v in values)
    model_state.reset_rnn_states(model)
    model_state.assign_carried(model, values)
    np.testing.assert_array_equal(model_state.carried_values(model)[0], values[0])


def test_exact_gradient_clipping_changes_nothing_for_dense_gradients_on_one_device():
    def trained(patch):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        optimizer = keras.optimizers.SGD(1.0, global_clipnorm=0.01)
        if patch:
            keras_private.exact_gradient_clipping(keras_private.exact_gradient_clipping(optimizer))  # idempotent
        model.compile(optimizer, "mse")
        model.fit(np.ones((8, 4)), np.zeros((8, 3)), epochs=2, verbose=0)
        return [w.numpy() for w in model.weights]

    for patched, stock in zip(trained(True), trained(False)):
        np.testing.assert_array_equal(patched, stock)


@pytest.mark.parametrize("clipping", [{"global_clipnorm": 1.0}, {"clipnorm": 1.0}])
def test_exact_gradient_clipping_clips_repeated_rows_by_the_dense_gradient_norm(clipping):
    values = np.ones((3, 2), "float32")  # three rows of word 1: its dense row is (3, 3), norm sqrt(18)
    gradient = tf.IndexedSlices(tf.constant(values), tf.constant([1, 1, 1]), tf.constant([4, 2]))
    dense = np.zeros((4, 2), "float32")
    dense[1] = 3.0
    stock = tf.convert_to_tensor(keras.optimizers.SGD(**clipping)._clip_gradients([gradient])[0]).numpy()
    # Keras squares the rows as they come (norm sqrt(6)): if this fails, Keras changed and the fix may go.
    np.testing.assert_allclose(stock, dense / np.sqrt(6.0), rtol=1e-6)
    exact = keras_private.exact_gradient_clipping(keras.optimizers.SGD(**clipping))._clip_gradients([gradient])[0]
    np.testing.assert_allclose(tf.convert_to_tensor(exact).numpy(), dense / np.sqrt(18.0), rtol=1e-6)

"""The check shared by the fused-loop tests: a fused layer against its cell stepped by Keras."""

import numpy as np
import tensorflow as tf


def assert_fused_equals_stepped(layer, stepped, rng, states, batch, features, steps=6):
    """Outputs, final states and gradients (inputs, initial states, weights) of `layer` equal `stepped`'s.

    `layer` returns sequences and states; `stepped` is `keras.layers.RNN` over the same
    cell; `states`: how many state tensors the cell carries (each `(batch, units)`).
    """
    units = layer.cell.units
    x = tf.constant(rng.normal(size=(batch, steps, features)).astype("float32"))
    state = [tf.constant(rng.normal(size=(batch, units)).astype("float32")) for _ in range(states)]
    heads = [rng.normal(size=s).astype("float32") for s in [(batch, steps, units)] + [(batch, units)] * states]
    results = []
    for rnn in (layer, stepped):
        with tf.GradientTape() as tape:
            tape.watch([x, *state])
            outs = rnn(x, initial_state=state, training=True)
            loss = sum(tf.reduce_sum(o * h) for o, h in zip(outs, heads))
        # inputs, initial state, kernel, recurrent kernel(s), bias
        grads = tape.gradient(loss, [x, *state, *layer.trainable_weights])
        results.append([o.numpy() for o in outs] + [g.numpy() for g in grads])
    for fused, reference in zip(*results):
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-5)

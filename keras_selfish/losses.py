"""Softmax cross-entropy on integer targets, forward and gradient each one XLA-fused pass.

    model.compile(optimizer, ks.losses.SparseSoftmaxCrossEntropy())

computes what `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
computes (TensorFlow's fused `sparse_softmax_cross_entropy_with_logits`), to
float rounding, in less time on a CPU: the forward pass reads the logits for the
row maxima and log-sum-exps and picks the target logits; the backward pass is one
pass that writes `upstream * (softmax(logits) - onehot(labels))`. Nothing of the
size of the logits is kept between them but the logits themselves (on a 10,000-word
softmax over 700 tokens, the logits are 28 MB).
"""

import keras
import tensorflow as tf


@tf.function(jit_compile=True, autograph=False)
def _forward(logits, labels):
    """Per-row loss `(rows,)`, row maxima and log-sum-exps of the shifted logits `(rows, 1)`.

    logits `(rows, classes)`, labels `(rows,)`. The backward pass shifts by the
    row maximum again (exact) rather than subtracting their sum, which would lose
    the precision of a softmax near 1 on large logits.
    """
    row_max = tf.reduce_max(logits, axis=-1, keepdims=True)
    shifted = logits - row_max
    log_sum = tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=-1, keepdims=True))
    picked = tf.gather(shifted, labels[:, None], batch_dims=1)
    return (log_sum - picked)[:, 0], row_max, log_sum


@tf.function(jit_compile=True, autograph=False)
def _backward(logits, labels, row_max, log_sum, upstream):
    """`upstream[:, None] * (softmax(logits) - onehot(labels))`, `(rows, classes)`."""
    onehot = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return (tf.exp((logits - row_max) - log_sum) - onehot) * upstream[:, None]


@tf.custom_gradient
def _cross_entropy(logits, labels):
    loss, row_max, log_sum = _forward(logits, labels)
    return loss, lambda upstream: (_backward(logits, labels, row_max, log_sum, upstream), None)


def sparse_softmax_cross_entropy(labels, logits):
    """Per-position cross-entropy `-log softmax(logits)[label]`.

    Args:
        labels: integer ids `(...)` in `[0, classes)` (or `(..., 1)`).
        logits: float `(..., classes)`.

    Returns:
        float `(...)`, the loss at each position.
    """
    logits = tf.convert_to_tensor(logits)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == logits.shape.rank and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, -1)
    loss = _cross_entropy(tf.reshape(logits, [-1, logits.shape[-1]]), tf.reshape(tf.cast(labels, "int32"), [-1]))
    return tf.reshape(loss, tf.shape(labels))


@keras.saving.register_keras_serializable(package="keras_selfish")
class SparseSoftmaxCrossEntropy(keras.losses.Loss):
    """`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, faster (see the module docstring).

    Labels must lie in `[0, classes)` (an out-of-range label is not reported).

    Args:
        reduction, name, dtype: as in `keras.losses.Loss`.
    """

    def __init__(self, reduction="sum_over_batch_size", name="sparse_softmax_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return sparse_softmax_cross_entropy(y_true, y_pred)

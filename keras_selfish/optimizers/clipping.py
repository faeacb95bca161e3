"""Global-norm clipping on the norm of the dense gradient, also for `IndexedSlices`.

An embedding's gradient is an `IndexedSlices`: one row per token of the batch, so
a word that occurs `k` times has `k` rows. Its dense gradient is their sum per
word, and so is its norm (what the authors' `torch.nn.utils.clip_grad_norm_`
clips on). Keras 3 (3.15) squares the rows as they come
(`keras.ops.square` of an `IndexedSlices` squares its values), which
under-estimates the norm whenever a word repeats in a batch, as frequent words
always do in a language-model batch. `summed_rows` sums the repeats first.
"""

import tensorflow as tf


def summed_rows(gradient, num_rows):
    """`(rows, indices)` of `IndexedSlices` `gradient`, each index's rows summed into its first occurrence.

    `rows (n, ...)`, `indices (n,)` as in `gradient`; the other occurrences' rows
    become zero, so the rows sum to the dense gradient (`num_rows` long) and
    their norm is its norm. Static shapes only (no `tf.unique`), so it also
    compiles under XLA.
    """
    n = tf.shape(gradient.indices)[0]
    first = tf.math.unsorted_segment_min(tf.range(n), gradient.indices, num_rows)
    return tf.math.unsorted_segment_sum(gradient.values, tf.gather(first, gradient.indices), n), gradient.indices


def with_summed_rows(gradient):
    """`gradient` with the repeated rows of an `IndexedSlices` summed (`summed_rows`); other gradients as they are."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows, indices = summed_rows(gradient, gradient.dense_shape[0])
    return tf.IndexedSlices(rows, indices, gradient.dense_shape)


def squared_norm(gradient):
    """`sum(gradient ** 2)` of a dense gradient as a float64 scalar (summed in float32 for 16-bit gradients)."""
    if gradient.dtype.size < 4:
        gradient = tf.cast(gradient, "float32")
    return tf.cast(2.0 * tf.nn.l2_loss(gradient), "float64")


def clip_scale(squared_norms, clipnorm):
    """Keras's global-norm clipping factor `clipnorm / max(norm, clipnorm)` (float64; NaN for a non-finite norm)."""
    norm = tf.sqrt(tf.add_n(squared_norms))
    return clipnorm * tf.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)

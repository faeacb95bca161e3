"""Embedding lookup with a masked table."""

import keras
from keras import ops

from keras_selfish.layers.arguments import fraction
from keras_selfish.layers.arguments import positive_int
from keras_selfish.sparsity.masked_weight import KeepsBlockSizes
from keras_selfish.sparsity.masked_weight import add_mask


@keras.saving.register_keras_serializable(package="keras_selfish")
class MaskedEmbedding(KeepsBlockSizes, keras.layers.Layer):
    """`keras.layers.Embedding` whose table carries a 0/1 mask.

    Inactive entries are kept at exactly zero (see `ks.sparsity`), so the lookup is
    a plain gather and the gradient of the table stays a sparse `IndexedSlices`.

    Weight tying: `layer(h, reverse=True)` computes output logits `h @ E^T (+ b)`
    with the same table, so a tied language model has ONE masked matrix (and one
    mask) for its embedding and softmax; `output_bias=True` adds the softmax bias.

    Block masks (`ks.sparsity.initialize(..., block_size=b)`) run along the
    features (`block_axis=1`): 1 x b blocks of one row, the blocks TFLite's
    FULLY_CONNECTED keeps sparse for the tied softmax, whose weight
    `(vocab, features)` is the table; untied, the exporter stores such a table
    row-compressed (only its active blocks).

    Args:
        input_dim: vocabulary size.
        output_dim: embedding dimension.
        embeddings_initializer, embeddings_regularizer, embeddings_constraint,
        mask_zero: as in `keras.layers.Embedding`.
        word_dropout: embedding dropout (AWD-LSTM's `dropoute`): in training, whole
            words (rows of the table) are dropped with this rate for the batch, and
            the kept rows scaled by `1 / (1 - rate)`.
        output_bias: create the bias of the tied output projection.
        seed: int, for reproducible word dropout.

    Input shape: integer ids `(...)` -> `(..., output_dim)`; with `reverse=True`,
    `(..., output_dim)` -> `(..., input_dim)`.
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_zero=False,
        word_dropout=0.0,
        output_bias=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_dim = positive_int("input_dim", input_dim)
        self.output_dim = positive_int("output_dim", output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = mask_zero
        self.word_dropout = fraction("word_dropout", word_dropout)
        self.output_bias = output_bias
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = mask_zero
        self.autocast = False

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            name="embeddings",
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
        )
        self._masked_embeddings = add_mask(self, self.embeddings, block_axis=1)
        self.bias = None
        if self.output_bias:
            self.bias = self.add_weight(shape=(self.input_dim,), name="output_bias", initializer="zeros")

    @property
    def masked_weights(self):
        return [self._masked_embeddings] if self.built else []

    def call(self, inputs, training=False, reverse=False):
        if reverse:
            logits = ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings, inputs.dtype)))
            return logits if self.bias is None else logits + ops.cast(self.bias, logits.dtype)
        ids = ops.cast(inputs, "int32")
        rows = ops.take(self.embeddings, ids, axis=0)
        if training and self.word_dropout > 0.0:
            keep = keras.random.dropout(ops.ones((self.input_dim, 1)), self.word_dropout, seed=self.seed_generator)
            rows = rows * ops.take(keep, ids, axis=0)
        return ops.cast(rows, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
            "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint),
            "mask_zero": self.mask_zero,
            "word_dropout": self.word_dropout,
            "output_bias": self.output_bias,
            "seed": self.seed,
        }

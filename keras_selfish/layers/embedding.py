"""Embedding lookup with a masked table."""

import keras
from keras import ops

from keras_selfish.sparsity.masked_weight import add_mask


@keras.saving.register_keras_serializable(package="keras_selfish")
class MaskedEmbedding(keras.layers.Layer):
    """`keras.layers.Embedding` whose table carries a 0/1 mask.

    Inactive entries are kept at exactly zero (see `ks.sparsity`), so the lookup is
    a plain gather and the gradient of the table stays a sparse `IndexedSlices`.

    Args:
        input_dim: vocabulary size.
        output_dim: embedding dimension.
        embeddings_initializer, embeddings_regularizer, embeddings_constraint,
        mask_zero: as in `keras.layers.Embedding`.

    Input shape: integer ids `(...)`. Output shape: `(..., output_dim)`.
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        mask_zero=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(input_dim) <= 0 or int(output_dim) <= 0:
            raise ValueError(
                f"`input_dim` and `output_dim` must be positive, got {input_dim}, {output_dim}."
            )
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = mask_zero
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
        self._masked_embeddings = add_mask(self, self.embeddings)

    @property
    def masked_weights(self):
        return [self._masked_embeddings] if self.built else []

    def call(self, inputs):
        rows = ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)
        return ops.cast(rows, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
            "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint),
            "mask_zero": self.mask_zero,
        }

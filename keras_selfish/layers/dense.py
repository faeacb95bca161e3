"""Densely connected layer with a masked kernel, and the affine map it shares with the recurrent layers."""

import keras
import tensorflow as tf

from keras_selfish.layers.arguments import positive_int
from keras_selfish.sparsity.masked_weight import KeepsBlockSizes
from keras_selfish.sparsity.masked_weight import add_mask


def affine(x, kernel, bias=None):
    """`x @ kernel + bias` over the last axis: `x (..., m)`, `kernel (m, n)`, `bias (n,)` -> `(..., n)`.

    One 2-D matmul of the rows of `x`, its bias added by `tf.nn.bias_add`, which
    TensorFlow fuses into the matmul (one kernel that writes the output once);
    keras.ops's matmul of a 3-D input (a tensordot) followed by an add writes it
    twice, on the 2 x 200 LM's 10,000-way decoder 28 MB more per step.
    """
    y = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if x.shape.rank == 2:
        return y
    leading = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
    return tf.reshape(y, [*leading, kernel.shape[-1]])


@keras.saving.register_keras_serializable(package="keras_selfish")
class MaskedDense(KeepsBlockSizes, keras.layers.Layer):
    """`keras.layers.Dense` whose kernel carries a 0/1 mask: `y = act(x @ (W * M) + b)`.

    Inactive kernel entries are kept at exactly zero (see `ks.sparsity`), so the
    layer computes `x @ W`. The bias stays dense. With an all-ones mask the layer
    computes exactly what `keras.layers.Dense` computes with the same weights.

    Args:
        units: output dimension.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint:
            as in `keras.layers.Dense`.

    Input shape: `(..., input_dim)`. Output shape: `(..., units)`.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = positive_int("units", units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self._masked_kernel = add_mask(self, self.kernel)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,),
                name="bias",
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    @property
    def masked_weights(self):
        return [self._masked_kernel] if self.built else []

    def call(self, inputs):
        x = affine(inputs, self.kernel, self.bias)
        return self.activation(x) if self.activation is not None else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }

"""Common constructor, weights and config of the sparse cells written from scratch (RHN, ON-LSTM)."""

import keras
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from keras_selfish.layers.arguments import fraction
from keras_selfish.layers.arguments import positive_int
from keras_selfish.layers.sparse_rnn import SparseCellMixin


class CustomSparseCell(SparseCellMixin, DropoutRNNCell, keras.layers.Layer):
    """Base of sparse cells without a stock Keras counterpart.

    Holds the arguments every such cell shares (units, activations, initialisers,
    dropout, recurrent dropout, weight drop, seed) and their config.
    """

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        dropout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = positive_int("units", units)
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dropout = fraction("dropout", dropout)
        self.recurrent_dropout = fraction("recurrent_dropout", recurrent_dropout)
        self.weight_dropout = fraction("weight_dropout", weight_dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "weight_dropout": self.weight_dropout,
            "seed": self.seed,
        }

"""Sparse ordered-neurons LSTM (Shen et al., 2019) with one masked matrix for all gates."""

import keras
from keras import ops

from keras_selfish.layers.arguments import positive_int
from keras_selfish.layers.custom_cell import CustomSparseCell
from keras_selfish.layers.sparse_rnn import SparseRNN
from keras_selfish.sparsity.masked_weight import add_mask

ONLSTM_GATES = ("master_f", "master_i", "i", "f", "c", "o")


def cumax(x):
    """Cumulative softmax along the last axis."""
    return ops.cumsum(ops.softmax(x, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="keras_selfish")
class ONLSTMCell(CustomSparseCell):
    """ON-LSTM cell: an LSTM whose neurons are ordered by master gates.

    With `n = units / chunk_size` chunks and the gate layout
    `[master_f (n), master_i (n), i, f, c, o (units each)]` along the last axis of
    both kernels (one matrix each, so all six gates compete for its weights):

        F = cumax(z_master_f), I = 1 - cumax(z_master_i)   (repeated chunk_size times)
        w = F * I
        f = sigmoid(z_f) * w + (F - w),  i = sigmoid(z_i) * w + (I - w)
        c = f * c_prev + i * tanh(z_c),  h = sigmoid(z_o) * tanh(c)

    Masked: `kernel (input_dim, 4 * units + 2 * n)`, `recurrent_kernel (units, 4 *
    units + 2 * n)`; the bias is dense. States: `[h, c]`.

    Args:
        units: hidden size, a multiple of `chunk_size`.
        chunk_size: neurons per master-gate chunk (the paper: 10).
        activation, recurrent_activation, use_bias, initialisers, dropout,
        recurrent_dropout, weight_dropout (DropConnect on the recurrent kernel,
        once per sequence), seed: as in `CustomSparseCell`.
    """

    gate_names = ONLSTM_GATES

    def __init__(self, units, chunk_size=10, **kwargs):
        super().__init__(units, **kwargs)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        if self.units % self.chunk_size:
            raise ValueError(f"units ({self.units}) must be a multiple of chunk_size ({self.chunk_size}).")
        self.chunks = self.units // self.chunk_size
        self.gate_sizes = (self.chunks, self.chunks) + (self.units,) * 4
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape):
        width = sum(self.gate_sizes)
        self.kernel = self.add_weight(shape=(input_shape[-1], width), name="kernel", initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(shape=(self.units, width), name="recurrent_kernel", initializer=self.recurrent_initializer)
        self.bias = self.add_weight(shape=(width,), name="bias", initializer=self.bias_initializer) if self.use_bias else None
        self._masked = [
            add_mask(self, w, num_gates=len(self.gate_names), gate_names=self.gate_names, gate_sizes=self.gate_sizes)
            for w in (self.kernel, self.recurrent_kernel)
        ]

    def project_inputs(self, inputs, training=False):
        """`dropout(x) @ W + b`: `(batch, width)`, or `(time, batch, width)` for a sequence."""
        return self.project(inputs, self.kernel, self.bias, training)

    def recurrent_step(self, projected, states, training=False, weights=None):
        """One ON-LSTM step given the projected input `(batch, 4 * units + 2 * chunks)`."""
        h_tm1, c_tm1 = states[0], states[1]
        recurrent_kernel = self.recurrent_kernel if weights is None else weights
        z = projected + ops.matmul(self.recurrent_dropout_state(h_tm1, training), recurrent_kernel)
        n = self.chunks
        z_master_f, z_master_i, z_gates = z[:, :n], z[:, n : 2 * n], z[:, 2 * n :]
        master_f = ops.repeat(cumax(z_master_f), self.chunk_size, axis=-1)
        master_i = ops.repeat(1.0 - cumax(z_master_i), self.chunk_size, axis=-1)
        z_i, z_f, z_c, z_o = ops.split(z_gates, 4, axis=-1)
        overlap = master_f * master_i
        f = self.recurrent_activation(z_f) * overlap + (master_f - overlap)
        i = self.recurrent_activation(z_i) * overlap + (master_i - overlap)
        c = f * c_tm1 + i * self.activation(z_c)
        h = self.recurrent_activation(z_o) * self.activation(c)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "chunk_size": self.chunk_size}


@keras.saving.register_keras_serializable(package="keras_selfish")
class ONLSTM(SparseRNN):
    """Ordered-neurons LSTM layer over `ONLSTMCell` (arguments of both, as `SparseLSTM`).

    Input: `(batch, time, features)`. Output: `(batch, units)` or `(batch, time,
    units)`; with `return_state` also `h` and `c`.
    """

    cell_class = ONLSTMCell

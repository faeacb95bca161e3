"""Sparse LSTM: all four gates share one masked kernel and one masked recurrent kernel."""

import keras
from keras import ops

from keras_selfish.layers.fused_lstm import lstm_loop
from keras_selfish.layers.sparse_rnn import StockCellMixin
from keras_selfish.layers.sparse_rnn import SparseRNN

LSTM_GATES = ("i", "f", "c", "o")


@keras.saving.register_keras_serializable(package="keras_selfish")
class SparseLSTMCell(StockCellMixin, keras.layers.LSTMCell):
    """`keras.layers.LSTMCell` with masked `kernel` and `recurrent_kernel`.

    Same arguments, initialisation and gate layout (`[i, f, c, o]` along the last
    axis) as the stock cell; the bias stays dense. Dropout uses one input mask and
    one recurrent mask shared by all gates. `weight_dropout` is AWD-LSTM's weight
    drop: DropConnect on the recurrent kernel, one draw per sequence.

    Weights: `kernel (input_dim, 4 * units)`, `recurrent_kernel (units, 4 * units)`,
    `bias (4 * units,)`, plus `kernel_mask` and `recurrent_kernel_mask`.
    """

    gate_names = LSTM_GATES

    def project_inputs(self, inputs, training=False):
        """`dropout(x) @ W + b`: `(batch, 4 * units)`, or `(time, batch, 4 * units)` for a sequence."""
        return self.project(inputs, self.kernel, self.bias if self.use_bias else None, training)

    def recurrent_step(self, projected, states, training=False, weights=None):
        """One LSTM step given the projected input `(batch, 4 * units)`.

        `weights`: the recurrent kernel to use (`sequence_weights`), default the cell's own.
        """
        h_tm1, c_tm1 = states[0], states[1]
        recurrent_kernel = self.recurrent_kernel if weights is None else weights
        z = projected + ops.matmul(self.recurrent_dropout_state(h_tm1, training), recurrent_kernel)
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        c = f * c_tm1 + i * self.activation(z_c)
        o = self.recurrent_activation(z_o)
        h = o * self.activation(c)
        return h, [h, c]

    def fused_loop(self, training):
        """`lstm_loop` (XLA, hand-written BPTT) for the standard cell; None otherwise.

        It applies when `fusable(training)`: tanh and sigmoid activations, no
        recurrent dropout in this call.
        """
        if not self.fusable(training):
            return None

        def loop(projected, states, weights):
            kernel = ops.cast(weights, projected.dtype)
            outputs, last_cell = lstm_loop(projected, kernel, states[0], states[1])
            return outputs, [outputs[-1], last_cell]

        return loop


@keras.saving.register_keras_serializable(package="keras_selfish")
class SparseLSTM(SparseRNN):
    """Sparse drop-in replacement for `keras.layers.LSTM`.

    Takes the arguments of `keras.layers.LSTM` (except `use_cudnn`). With all-ones
    masks it computes exactly what the stock layer computes with the same weights.
    The input projection of the whole sequence runs as one matmul before the time
    loop; with the default activations, no padding mask and no recurrent dropout,
    the loop itself is XLA-compiled with a hand-written backward pass
    (`fused_lstm.lstm_loop`), so the layer is much faster than the stock one on CPU.
    `unroll` only matters when that fused loop does not apply.

    Input: `(batch, time, features)`. Output: `(batch, units)` or, with
    `return_sequences`, `(batch, time, units)`; with `return_state` also `h` and `c`.
    """

    cell_class = SparseLSTMCell

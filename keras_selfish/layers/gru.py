"""Sparse GRU: the three gates share one masked kernel and one masked recurrent kernel."""

import keras
from keras import ops

from keras_selfish.layers.fused_gru import gru_loop_reset_after
from keras_selfish.layers.fused_gru import gru_loop_reset_before
from keras_selfish.layers.sparse_rnn import StockCellMixin
from keras_selfish.layers.sparse_rnn import SparseRNN

GRU_GATES = ("z", "r", "h")


@keras.saving.register_keras_serializable(package="keras_selfish")
class SparseGRUCell(StockCellMixin, keras.layers.GRUCell):
    """`keras.layers.GRUCell` with masked `kernel` and `recurrent_kernel`.

    Same arguments (including `reset_after`), initialisation and gate layout
    (`[z, r, h]` along the last axis) as the stock cell; biases stay dense.

    Weights: `kernel (input_dim, 3 * units)`, `recurrent_kernel (units, 3 * units)`,
    `bias (3 * units,)` or `(2, 3 * units)` with `reset_after`, plus the two masks.
    """

    gate_names = GRU_GATES

    def _biases(self):
        """`(input_bias, recurrent_bias)`; either may be None."""
        if not self.use_bias:
            return None, None
        if not self.reset_after:
            return self.bias, None
        return self.bias[0], self.bias[1]

    def project_inputs(self, inputs, training=False):
        """`dropout(x) @ W + b_in`: `(batch, 3 * units)`, or `(time, batch, 3 * units)` for a sequence."""
        return self.project(inputs, self.kernel, self._biases()[0], training)

    def recurrent_step(self, projected, states, training=False, weights=None):
        """One GRU step given the projected input `(batch, 3 * units)`."""
        recurrent_kernel = self.recurrent_kernel if weights is None else weights
        nested = isinstance(states, (list, tuple))
        h_tm1 = states[0] if nested else states
        h_in = self.recurrent_dropout_state(h_tm1, training)
        recurrent_bias = self._biases()[1]
        x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
        if self.reset_after:
            inner = ops.matmul(h_in, recurrent_kernel)
            if recurrent_bias is not None:
                inner = inner + recurrent_bias
            r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
        else:
            r_z, r_r = ops.split(ops.matmul(h_in, recurrent_kernel[:, : 2 * self.units]), 2, axis=-1)
        z = self.recurrent_activation(x_z + r_z)
        r = self.recurrent_activation(x_r + r_r)
        if self.reset_after:
            candidate = r * r_h
        else:
            candidate = ops.matmul(r * h_in, recurrent_kernel[:, 2 * self.units :])
        hh = self.activation(x_h + candidate)
        h = z * h_tm1 + (1 - z) * hh
        return h, ([h] if nested else h)

    def fused_loop(self, training):
        """`fused_gru`'s loop (one graph while loop, hand-written BPTT) for `reset_after` True or False; None
        unless `fusable(training)` (tanh and sigmoid, no recurrent dropout in this call)."""
        if not self.fusable(training):
            return None

        def loop(projected, states, weights):
            kernel = ops.cast(weights, projected.dtype)
            if self.reset_after:
                bias = self._biases()[1]
                bias = ops.zeros((3 * self.units,), projected.dtype) if bias is None else ops.cast(bias, projected.dtype)
                outputs = gru_loop_reset_after(projected, kernel, bias, states[0])
            else:
                outputs = gru_loop_reset_before(projected, kernel, states[0])
            return outputs, [outputs[-1]]

        return loop


@keras.saving.register_keras_serializable(package="keras_selfish")
class SparseGRU(SparseRNN):
    """Sparse drop-in replacement for `keras.layers.GRU`.

    Takes the arguments of `keras.layers.GRU` (except `use_cudnn`), including
    `reset_after`. With all-ones masks it computes exactly what the stock layer
    computes with the same weights. The input projection runs once per sequence;
    with the default activations, no padding mask and no recurrent dropout in the
    call, the time loop is one compiled while loop with a hand-written backward pass
    (`fused_gru`, both `reset_after` variants). `unroll` only matters otherwise.

    Input: `(batch, time, features)`. Output: `(batch, units)` or
    `(batch, time, units)`; with `return_state` also the final `h`.
    """

    cell_class = SparseGRUCell

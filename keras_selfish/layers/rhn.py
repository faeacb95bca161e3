"""Sparse recurrent highway network (Zilly et al., 2017) with masked, gate-aware matrices."""

import keras
from keras import ops

from keras_selfish.layers.arguments import positive_int
from keras_selfish.layers.custom_cell import CustomSparseCell
from keras_selfish.layers.fused_rhn import rhn_loop
from keras_selfish.layers.sparse_rnn import SparseRNN
from keras_selfish.sparsity.masked_weight import add_mask


@keras.saving.register_keras_serializable(package="keras_selfish")
class RHNCell(CustomSparseCell):
    """Recurrent highway cell: `depth` highway layers per time step.

    With state `s_0 = s_{t-1}` and, for `l = 1..depth`,

        h_l = tanh(   [l == 1] x W_h + s_{l-1} R_{h,l} + b_{h,l})
        t_l = sigmoid([l == 1] x W_t + s_{l-1} R_{t,l} + b_{t,l})
        c_l = 1 - t_l                      (coupled carry gate), or
              sigmoid([l == 1] x W_c + s_{l-1} R_{c,l} + b_{c,l})
        s_l = h_l * t_l + s_{l-1} * c_l

    the output and new state are `s_depth`. Masked matrices (gates `[h, t]`, or
    `[h, t, c]` uncoupled, concatenated on the last axis): `kernel (input_dim, G *
    units)` and one `recurrent_kernel_<l> (units, G * units)` per depth level; the
    bias `(depth, G * units)` is dense. `recurrent_dropout` applies one mask, shared
    by all depth levels and time steps, to the state entering each level.

    Args:
        units: state size.
        depth: recurrence depth (highway layers per step; the paper: 10).
        couple_carry: use `c = 1 - t` (the paper's choice).
        transform_bias: initial value of the transform-gate bias (negative values
            start the cell close to carrying its state).
        activation, recurrent_activation, use_bias, initialisers, dropout,
        recurrent_dropout, weight_dropout, seed: as in `CustomSparseCell`.
    """

    def __init__(self, units, depth=10, couple_carry=True, transform_bias=0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.depth = positive_int("depth", depth)
        self.couple_carry = couple_carry
        self.transform_bias = float(transform_bias)
        self.gate_names = ("h", "t") if couple_carry else ("h", "t", "c")
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        gates = len(self.gate_names)
        width = gates * self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], width), name="kernel", initializer=self.kernel_initializer)
        self.recurrent_kernels = [
            self.add_weight(shape=(self.units, width), name=f"recurrent_kernel_{level}", initializer=self.recurrent_initializer)
            for level in range(self.depth)
        ]
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.depth, width), name="bias", initializer=self.bias_initializer)
            if self.transform_bias:
                self.bias.assign(ops.concatenate([
                    self.bias[:, : self.units],
                    ops.full((self.depth, self.units), self.transform_bias),
                    self.bias[:, 2 * self.units :],
                ], axis=-1))
        self._masked = [add_mask(self, w, num_gates=gates, gate_names=self.gate_names) for w in [self.kernel, *self.recurrent_kernels]]

    def project_inputs(self, inputs, training=False):
        """`dropout(x) @ W`: `(batch, G * units)`, or `(time, batch, G * units)` for a sequence."""
        return self.project(inputs, self.kernel, None, training)

    def sequence_weights(self, training=False):
        return [self.weight_drop(kernel, training) for kernel in self.recurrent_kernels]

    def recurrent_step(self, projected, states, training=False, weights=None):
        """One time step (all `depth` highway layers) given the projected input."""
        nested = isinstance(states, (list, tuple))
        s = states[0] if nested else states
        kernels = self.recurrent_kernels if weights is None else weights
        keep = None
        if training and self.recurrent_dropout > 0.0:
            keep = self.get_recurrent_dropout_mask(s)
        for level, kernel in enumerate(kernels):
            z = ops.matmul(s if keep is None else s * keep, kernel)
            if level == 0:
                z = z + projected
            if self.bias is not None:
                z = z + self.bias[level]
            gates = ops.split(z, len(self.gate_names), axis=-1)
            h = self.activation(gates[0])
            t = self.recurrent_activation(gates[1])
            c = 1.0 - t if self.couple_carry else self.recurrent_activation(gates[2])
            s = h * t + s * c
        return s, ([s] if nested else s)

    def fused_loop(self, training):
        """`fused_rhn.rhn_loop` (one graph while loop, hand-written BPTT), coupled or not; None unless
        `fusable(training)` (tanh and sigmoid, no recurrent dropout in this call)."""
        if not self.fusable(training):
            return None

        def loop(projected, states, weights):
            dtype = projected.dtype
            kernels = [ops.cast(w, dtype) for w in weights]
            width = len(self.gate_names) * self.units
            bias = ops.zeros((self.depth, width), dtype) if self.bias is None else ops.cast(self.bias, dtype)
            outputs = rhn_loop(projected, kernels, bias, states[0], self.couple_carry)
            return outputs, [outputs[-1]]

        return loop

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "couple_carry": self.couple_carry,
            "transform_bias": self.transform_bias,
        }


@keras.saving.register_keras_serializable(package="keras_selfish")
class RHN(SparseRNN):
    """Recurrent highway network layer over `RHNCell`.

    Takes the `RHNCell` arguments and the `keras.layers.RNN` ones
    (`return_sequences`, `return_state`, `stateful`, `go_backwards`, ...). The input
    projection of the whole sequence runs as one matmul before the time loop; with
    the default activations, no padding mask and no recurrent dropout in the call,
    the loop (all `depth` levels of every step) is one compiled while loop with a hand-written
    backward pass (`fused_rhn.rhn_loop`, coupled or uncoupled carry). `unroll` only
    matters otherwise.

    Input: `(batch, time, features)`. Output: `(batch, units)` or `(batch, time, units)`.
    """

    cell_class = RHNCell

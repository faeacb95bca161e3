"""The LSTM time loop as two XLA-compiled functions with a hand-written backward pass.

`lstm_loop(projected, recurrent_kernel, h0, c0)` runs the standard LSTM recurrence
(sigmoid gates, tanh activation, gate layout `[i, f, c, o]`) over a time-major
sequence whose input projection `x @ W + b` is already done. Its gradient is the
textbook backpropagation through time, not TensorFlow's automatic differentiation of
a while loop:

* the forward loop keeps the pre-activations `z_t` and cells `c_t`;
* the backward loop carries only `dh` and `dc`; per step it does one
  `(batch, 4 * units) @ (4 * units, units)` matmul and a handful of elementwise ops
  whose time-independent factors are computed for the whole sequence at once;
* the recurrent-kernel gradient is one `(units, time * batch) @ (time * batch, 4 * units)`
  matmul after the loop instead of one small matmul per step.

Both loops are compiled with XLA, which fuses each step's elementwise work into
one kernel; the kernel gradient's matmul runs outside XLA, in TensorFlow's
multi-threaded matmul (at 650 units 1.4x the rate of XLA's on this CPU). On this
project's CPU this makes a 2-layer LSTM's forward + backward pass about 1.6x
faster than stock `keras.layers.LSTM` (see `bench/throughput.py`).
TensorFlow backend only, like the rest of the package.
"""

import tensorflow as tf

from keras_selfish.layers.time_loop import custom_loop
from keras_selfish.layers.time_loop import previous
from keras_selfish.layers.time_loop import scan
from keras_selfish.layers.time_loop import time_matmul


@tf.function(jit_compile=True, autograph=False)
def _forward(projected, recurrent_kernel, h0, c0):
    """`(outputs, last_cell), (cells, pre_activations)`, time-major, for `projected (time, batch, 4u)`."""
    units = recurrent_kernel.shape[0]

    def step(t, carry):
        h, c = carry
        z = projected[t] + tf.matmul(h, recurrent_kernel)
        i, f, _, o = tf.split(tf.sigmoid(z), 4, axis=1)
        c = f * c + i * tf.tanh(z[:, 2 * units : 3 * units])
        h = o * tf.tanh(c)
        return (h, c), [h, c, z]

    _, (outputs, cells, pre) = scan(step, tf.shape(projected)[0], (h0, c0), 3, projected.dtype)
    return (outputs, cells[-1]), (cells, pre)


@tf.function(jit_compile=True, autograph=False)
def _backward(d_outputs, d_last_cell, recurrent_kernel, h0, c0, cells, pre):
    """Gradients of `(projected, h0, c0)` given those of `outputs` and the last cell."""
    units = recurrent_kernel.shape[0]
    i, f, o = (tf.sigmoid(pre[..., k * units : (k + 1) * units]) for k in (0, 1, 3))
    g = tf.tanh(pre[..., 2 * units : 3 * units])
    tanh_c = tf.tanh(cells)
    c_prev = previous(c0, cells)
    # dL/dc_t gets dh_t * dh_t/dc_t; dL/dz_t = [dc_t, dc_t, dc_t, dh_t] * gate_factors.
    dh_dc = o * (1.0 - tanh_c * tanh_c)
    gate_factors = tf.concat(
        [g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tanh_c * o * (1.0 - o)], -1
    )

    kernel_t = tf.transpose(recurrent_kernel)  # once: XLA would transpose at every step

    def step(t, carry):
        dh_next, dc_carry = carry
        dh = d_outputs[t] + dh_next
        dc = dh * dh_dc[t] + dc_carry
        dz = tf.concat([dc, dc, dc, dh], -1) * gate_factors[t]
        return (tf.matmul(dz, kernel_t), dc * f[t]), [dz]

    (dh0, dc0), (d_pre,) = scan(step, tf.shape(pre)[0], (tf.zeros_like(h0), d_last_cell), 1, pre.dtype, reverse=True)
    return d_pre, dh0, dc0


def _lstm_backward(d_outputs, inputs, outputs, saved):
    _, recurrent_kernel, h0, c0 = inputs
    d_pre, dh0, dc0 = _backward(*d_outputs, recurrent_kernel, h0, c0, *saved)
    return d_pre, time_matmul(previous(h0, outputs[0]), d_pre), dh0, dc0


_lstm_loop = custom_loop(_forward, _lstm_backward)


def lstm_loop(projected, recurrent_kernel, h0, c0):
    """LSTM over a projected sequence.

    Args:
      projected: `(time, batch, 4 * units)`, `x_t @ W + b` for every step.
      recurrent_kernel: `(units, 4 * units)`.
      h0, c0: `(batch, units)` initial states.

    Returns:
      `outputs (time, batch, units)` (every `h_t`) and the last cell `c_T (batch, units)`.
    """
    return _lstm_loop(projected, recurrent_kernel, h0, c0)

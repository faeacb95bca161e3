"""The GRU time loop as two compiled functions with a hand-written backward pass.

Standard GRU recurrence (sigmoid gates, tanh candidate, gate layout `[z, r, h]`,
`h_t = z * h_{t-1} + (1 - z) * hh`) over a time-major sequence whose input projection
`x @ W + b_in` is already done, in both Keras variants:

* `gru_loop_reset_after` (Keras's default, cuDNN's): `inner = h @ R + b_rec`,
  `hh = tanh(x_h + r * inner_h)`; one `(batch, units) @ (units, 3 * units)` matmul
  per step forward and one per step backward. The backward is linear in the
  carried `dh`: per step it is `dh_prev = dh * z + (dh * factors) @ R^T`, with the
  factors computed for the whole sequence at once.
* `gru_loop_reset_before`: `hh = tanh(x_h + (r * h) @ R_h)`; two dependent matmuls
  per step in both directions.

The forward keeps the gates (`z, r, hh`, and `inner_h` with reset_after); the
kernel gradients are one `(units, time * batch) @ (time * batch, ...)` matmul after
the backward loop.

Both functions are plain TensorFlow graphs, not XLA: on this project's CPU, XLA's
matmul is slower than TensorFlow's at these sizes, and the matmuls dominate (see
`bench/throughput.py --recurrent`). TensorFlow backend only.
"""

import tensorflow as tf

from keras_selfish.layers.time_loop import custom_loop
from keras_selfish.layers.time_loop import previous
from keras_selfish.layers.time_loop import scan
from keras_selfish.layers.time_loop import time_matmul


@tf.function(autograph=False)
def _forward_after(projected, recurrent_kernel, recurrent_bias, h0):
    units = recurrent_kernel.shape[0]

    def step(t, h):
        x = projected[t]
        inner = tf.matmul(h, recurrent_kernel) + recurrent_bias
        zr = tf.sigmoid(x[:, : 2 * units] + inner[:, : 2 * units])
        z, r = zr[:, :units], zr[:, units:]
        inner_h = inner[:, 2 * units :]
        hh = tf.tanh(x[:, 2 * units :] + r * inner_h)
        h = z * h + (1.0 - z) * hh
        return h, [h, tf.concat([zr, hh], -1), inner_h]

    _, (outputs, gates, inner_h) = scan(step, tf.shape(projected)[0], h0, 3, projected.dtype)
    return outputs, (gates, inner_h)


@tf.function(autograph=False)
def _backward_after(d_outputs, recurrent_kernel, h0, outputs, gates, inner_h):
    units = recurrent_kernel.shape[0]
    z, r, hh = (gates[..., k * units : (k + 1) * units] for k in range(3))
    h_prev = previous(h0, outputs)
    # dL/d(pre-activation) = dh_t * factor, per gate; the recurrent matmul sees r * d(pre_h).
    f_z = (h_prev - hh) * z * (1.0 - z)
    f_h = (1.0 - z) * (1.0 - hh * hh)
    f_r = f_h * inner_h * r * (1.0 - r)
    inner_factors = tf.concat([f_z, f_r, f_h * r], -1)

    def step(t, dh_next):
        dh = d_outputs[t] + dh_next
        d_inner = tf.concat([dh, dh, dh], -1) * inner_factors[t]
        return dh * z[t] + tf.matmul(d_inner, recurrent_kernel, transpose_b=True), [dh]

    dh0, (dh,) = scan(step, tf.shape(gates)[0], tf.zeros_like(h0), 1, gates.dtype, reverse=True)
    dh3 = tf.concat([dh, dh, dh], -1)
    d_inner = dh3 * inner_factors
    d_projected = dh3 * tf.concat([f_z, f_r, f_h], -1)
    return d_projected, time_matmul(h_prev, d_inner), tf.reduce_sum(d_inner, (0, 1)), dh0


@tf.function(autograph=False)
def _forward_before(projected, recurrent_kernel, h0):
    units = recurrent_kernel.shape[0]
    kernel_zr, kernel_h = recurrent_kernel[:, : 2 * units], recurrent_kernel[:, 2 * units :]

    def step(t, h):
        x = projected[t]
        zr = tf.sigmoid(x[:, : 2 * units] + tf.matmul(h, kernel_zr))
        z, r = zr[:, :units], zr[:, units:]
        hh = tf.tanh(x[:, 2 * units :] + tf.matmul(r * h, kernel_h))
        h = z * h + (1.0 - z) * hh
        return h, [h, tf.concat([zr, hh], -1)]

    _, (outputs, gates) = scan(step, tf.shape(projected)[0], h0, 2, projected.dtype)
    return outputs, (gates,)


@tf.function(autograph=False)
def _backward_before(d_outputs, recurrent_kernel, h0, outputs, gates):
    units = recurrent_kernel.shape[0]
    z, r, hh = (gates[..., k * units : (k + 1) * units] for k in range(3))
    h_prev = previous(h0, outputs)
    f_z = (h_prev - hh) * z * (1.0 - z)
    f_h = (1.0 - z) * (1.0 - hh * hh)
    f_r = h_prev * r * (1.0 - r)
    kernel_zr, kernel_h = recurrent_kernel[:, : 2 * units], recurrent_kernel[:, 2 * units :]

    def step(t, dh_next):
        dh = d_outputs[t] + dh_next
        d_pre_h = dh * f_h[t]
        d_rh = tf.matmul(d_pre_h, kernel_h, transpose_b=True)  # gradient of r * h_prev
        d_pre_zr = tf.concat([dh * f_z[t], d_rh * f_r[t]], -1)
        dh_prev = dh * z[t] + d_rh * r[t] + tf.matmul(d_pre_zr, kernel_zr, transpose_b=True)
        return dh_prev, [tf.concat([d_pre_zr, d_pre_h], -1)]

    dh0, (d_projected,) = scan(step, tf.shape(gates)[0], tf.zeros_like(h0), 1, gates.dtype, reverse=True)
    d_kernel = tf.concat(
        [time_matmul(h_prev, d_projected[..., : 2 * units]), time_matmul(r * h_prev, d_projected[..., 2 * units :])], -1
    )
    return d_projected, d_kernel, dh0


_reset_after = custom_loop(
    _forward_after,
    lambda d, inputs, outputs, saved: _backward_after(d, inputs[1], inputs[3], outputs, *saved),
)
_reset_before = custom_loop(
    _forward_before,
    lambda d, inputs, outputs, saved: _backward_before(d, inputs[1], inputs[2], outputs, *saved),
)


def gru_loop_reset_after(projected, recurrent_kernel, recurrent_bias, h0):
    """GRU (`reset_after=True`) over a projected sequence.

    Args:
      projected: `(time, batch, 3 * units)`, `x_t @ W + b_in` for every step.
      recurrent_kernel: `(units, 3 * units)`; recurrent_bias: `(3 * units,)`.
      h0: `(batch, units)` initial state.

    Returns:
      `outputs (time, batch, units)`, every `h_t`.
    """
    return _reset_after(projected, recurrent_kernel, recurrent_bias, h0)


def gru_loop_reset_before(projected, recurrent_kernel, h0):
    """GRU (`reset_after=False`) over a projected sequence: as `gru_loop_reset_after`, no recurrent bias."""
    return _reset_before(projected, recurrent_kernel, h0)

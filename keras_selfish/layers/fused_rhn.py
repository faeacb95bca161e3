"""The recurrent highway network's time loop with a hand-written backward pass.

Standard RHN recurrence (tanh `h`, sigmoid `t` and `c` gates, see `rhn.RHNCell`) over a
time-major sequence whose input projection `x @ W` is already done. Each time step's
`depth` highway levels are unrolled inside one while-loop body: a step is `depth`
`(batch, units) @ (units, G * units)` matmuls and their gate math.

The forward stores every level's pre-activation `z_l (time, batch, G * units)` and
state `s_l (time, batch, units)` (for the paper's 830 x 10 RHN at batch 20, bptt 35
about 70 MB), so the backward recomputes nothing: its loop carries only `ds`, and
per level does `ds_prev = ds * c + (ds * factors) @ R_l^T`, with the factors
computed for the whole sequence at once. Each level's kernel gradient is one
`(units, time * batch) @ (time * batch, G * units)` matmul after the loop, instead
of one small matmul and one accumulation of a full-size gradient per step and level.

Both functions are plain TensorFlow graphs, not XLA: on this project's CPU, XLA's
matmul is slower than TensorFlow's at these sizes, and the matmuls dominate (see
`bench/throughput.py --recurrent`). TensorFlow backend only.
"""

import tensorflow as tf

from keras_selfish.layers.time_loop import custom_loop
from keras_selfish.layers.time_loop import previous
from keras_selfish.layers.time_loop import scan
from keras_selfish.layers.time_loop import time_matmul


def _gates(z, units, couple_carry):
    """`h, t, c` of pre-activations `z (..., G * units)`."""
    h = tf.tanh(z[..., :units])
    t = tf.sigmoid(z[..., units : 2 * units])
    c = 1.0 - t if couple_carry else tf.sigmoid(z[..., 2 * units :])
    return h, t, c


@tf.function(autograph=False)
def _forward(couple_carry, projected, bias, s0, *kernels):
    """`outputs, pre_activations + states`: per level `(time, batch, G * u)` and `(time, batch, u)`."""
    depth, units = len(kernels), kernels[0].shape[0]
    biases = tf.unstack(bias)

    def step(t, s):
        zs, ss = [], []
        for kernel, level_bias in zip(kernels, biases):
            z = tf.matmul(s, kernel) + level_bias
            if not zs:
                z += projected[t]
            h, gate_t, c = _gates(z, units, couple_carry)
            s = h * gate_t + s * c
            zs.append(z)
            ss.append(s)
        return s, zs + ss

    _, saved = scan(step, tf.shape(projected)[0], s0, 2 * depth, projected.dtype)
    return saved[-1], tuple(saved)


@tf.function(autograph=False)
def _backward(couple_carry, d_outputs, s0, outputs, kernels, saved):
    """Gradients of `(projected, bias, s0, *kernels)`."""
    depth, units = len(kernels), kernels[0].shape[0]
    pre, states = saved[:depth], saved[depth:]
    s_prev = [previous(s0, outputs), *states[:-1]]
    factors, carries = [], []
    for z, s in zip(pre, s_prev):
        # dL/dz_l = [ds_l] * G * factors_l for the level's incoming gradient ds_l = dL/ds_l.
        h, t, c = _gates(z, units, couple_carry)
        if couple_carry:
            factors.append(tf.concat([t * (1.0 - h * h), (h - s) * t * (1.0 - t)], -1))
        else:
            factors.append(tf.concat([t * (1.0 - h * h), h * t * (1.0 - t), s * c * (1.0 - c)], -1))
        carries.append(c)
    gates = pre[0].shape[-1] // units

    def step(t, ds_next):
        ds = d_outputs[t] + ds_next
        dzs = [None] * depth
        for level in reversed(range(depth)):
            dz = tf.concat([ds] * gates, -1) * factors[level][t]
            ds = ds * carries[level][t] + tf.matmul(dz, kernels[level], transpose_b=True)
            dzs[level] = dz
        return ds, dzs

    ds0, d_pre = scan(step, tf.shape(d_outputs)[0], tf.zeros_like(s0), depth, d_outputs.dtype, reverse=True)
    d_bias = tf.stack([tf.reduce_sum(dz, (0, 1)) for dz in d_pre])
    return (d_pre[0], d_bias, ds0, *(time_matmul(s, dz) for s, dz in zip(s_prev, d_pre)))


def _loop(couple_carry):
    return custom_loop(
        lambda *inputs: _forward(couple_carry, *inputs),
        lambda d, inputs, outputs, saved: _backward(couple_carry, d, inputs[2], outputs, inputs[3:], saved),
    )


_LOOPS = {True: _loop(True), False: _loop(False)}


def rhn_loop(projected, kernels, bias, s0, couple_carry=True):
    """RHN over a projected sequence.

    Args:
      projected: `(time, batch, G * units)`, `x_t @ W` for every step (`G` = 2
        gates `[h, t]` coupled, 3 `[h, t, c]` uncoupled).
      kernels: list of `depth` recurrent kernels `(units, G * units)`, one per level.
      bias: `(depth, G * units)`.
      s0: `(batch, units)` initial state.
      couple_carry: `c = 1 - t` (else `c` is its own gate).

    Returns:
      `outputs (time, batch, units)`, every `s_t`.
    """
    return _LOOPS[bool(couple_carry)](projected, bias, s0, *kernels)

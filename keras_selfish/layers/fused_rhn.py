"""The recurrent highway network's time loop as XLA-compiled functions with a hand-written backward.

Standard RHN recurrence (tanh `h`, sigmoid `t` and `c` gates, see `rhn.RHNCell`) over a
time-major sequence whose input projection `x @ W` is already done. Each time step's
`depth` highway levels are unrolled inside one XLA while-loop body, so a step is
`depth` `(batch, units) @ (units, G * units)` matmuls with their gate math fused.

The forward stores every level's pre-activation `z (time, depth, batch, G * units)`
and state `s (time, depth, batch, units)` (for the paper's 830 x 10 RHN at batch 20,
bptt 35 about 70 MB), so the backward recomputes nothing: its loop carries only
`ds`, and per level does `ds_prev = ds * c + (ds * factors) @ R_l^T`, with the
factors computed for the whole sequence at once. The kernel gradients are one
batched `(depth, units, time * batch) @ (depth, time * batch, G * units)` matmul after
the loop. TensorFlow backend only.
"""

import tensorflow as tf

from keras_selfish.layers.xla_loop import custom_loop
from keras_selfish.layers.xla_loop import previous
from keras_selfish.layers.xla_loop import scan


def _gates(z, units, couple_carry):
    """`h, t, c` of pre-activations `z (..., G * units)`."""
    h = tf.tanh(z[..., :units])
    t = tf.sigmoid(z[..., units : 2 * units])
    c = 1.0 - t if couple_carry else tf.sigmoid(z[..., 2 * units :])
    return h, t, c


@tf.function(jit_compile=True, autograph=False)
def _forward(projected, kernels, bias, s0, couple_carry):
    """`outputs, (pre_activations, states)`: `(time, batch, u)`, `(time, depth, batch, G * u)`, `(time, depth, batch, u)`."""
    depth, units = kernels.shape[0], kernels.shape[1]

    def step(t, s):
        zs, ss = [], []
        for level in range(depth):
            z = tf.matmul(s, kernels[level]) + bias[level]
            if level == 0:
                z += projected[t]
            h, gate_t, c = _gates(z, units, couple_carry)
            s = h * gate_t + s * c
            zs.append(z)
            ss.append(s)
        return s, [tf.stack(zs), tf.stack(ss)]

    _, (pre, states) = scan(step, tf.shape(projected)[0], s0, 2, projected.dtype)
    return states[:, -1], (pre, states)


@tf.function(jit_compile=True, autograph=False)
def _backward(d_outputs, kernels, s0, outputs, pre, states, couple_carry):
    """Gradients of `(projected, kernels, bias, s0)`."""
    depth, units, width = kernels.shape
    gates = width // units
    s_prev = tf.concat([previous(s0, outputs)[:, None], states[:, :-1]], 1)
    h, t, c = _gates(pre, units, couple_carry)
    # dL/dz = [ds] * G * factors for the level's incoming gradient ds = dL/ds_l.
    if couple_carry:
        factors = tf.concat([t * (1.0 - h * h), (h - s_prev) * t * (1.0 - t)], -1)
    else:
        factors = tf.concat([t * (1.0 - h * h), h * t * (1.0 - t), s_prev * c * (1.0 - c)], -1)
    kernels_t = tf.transpose(kernels, (0, 2, 1))

    def step(step_t, ds_next):
        ds = d_outputs[step_t] + ds_next
        dzs = [None] * depth
        for level in reversed(range(depth)):
            dz = tf.concat([ds] * gates, -1) * factors[step_t, level]
            ds = ds * c[step_t, level] + tf.matmul(dz, kernels_t[level])
            dzs[level] = dz
        return ds, [tf.stack(dzs)]

    ds0, (d_pre,) = scan(step, tf.shape(pre)[0], tf.zeros_like(s0), 1, pre.dtype, reverse=True)
    # Per level: sum over time and batch of s_{l-1}^T dz_l.
    level_major = lambda a: tf.reshape(tf.transpose(a, (1, 0, 2, 3)), (depth, -1, a.shape[-1]))  # noqa: E731
    d_kernels = tf.matmul(level_major(s_prev), level_major(d_pre), transpose_a=True)
    return d_pre[:, 0], d_kernels, tf.reduce_sum(d_pre, (0, 2)), ds0


def _loop(couple_carry):
    return custom_loop(
        lambda projected, kernels, bias, s0: _forward(projected, kernels, bias, s0, couple_carry),
        lambda d, inputs, outputs, saved: _backward(d, inputs[1], inputs[3], outputs, *saved, couple_carry),
    )


_LOOPS = {True: _loop(True), False: _loop(False)}


def rhn_loop(projected, kernels, bias, s0, couple_carry=True):
    """RHN over a projected sequence.

    Args:
      projected: `(time, batch, G * units)`, `x_t @ W` for every step (`G` = 2
        gates `[h, t]` coupled, 3 `[h, t, c]` uncoupled).
      kernels: `(depth, units, G * units)`, the recurrent kernel of each level.
      bias: `(depth, G * units)`.
      s0: `(batch, units)` initial state.
      couple_carry: `c = 1 - t` (else `c` is its own gate).

    Returns:
      `outputs (time, batch, units)`, every `s_t`.
    """
    return _LOOPS[bool(couple_carry)](projected, kernels, bias, s0)

"""Scaffolding shared by the fused time loops (`fused_lstm`, `fused_gru`, `fused_rhn`).

Each fused loop is a forward `scan` that keeps what its backward pass needs, and a
backward `scan` (reverse) that carries only the state gradients; the weight gradients
are one large matmul after the loop (`time_matmul`). Each module compiles its two
functions itself (XLA for the LSTM, a plain graph for GRU and RHN).
"""

import tensorflow as tf


def scan(step, steps, carry, num_outputs, dtype, reverse=False):
    """Runs `carry, outputs = step(t, carry)` for `t = 0 .. steps - 1` (reverse: back from `steps - 1`).

    `carry` is any nest of tensors; `outputs` a list of `num_outputs` tensors per step.
    Returns the last carry and each output stacked time-major, `(steps, ...)`.
    """
    arrays = [tf.TensorArray(dtype, size=steps) for _ in range(num_outputs)]

    def body(t, carry, arrays):
        carry, outputs = step(t, carry)
        return t + (-1 if reverse else 1), carry, [a.write(t, o) for a, o in zip(arrays, outputs)]

    cond = (lambda t, *_: t >= 0) if reverse else (lambda t, *_: t < steps)
    _, carry, arrays = tf.while_loop(cond, body, (steps - 1 if reverse else 0, carry, arrays))
    return carry, [a.stack() for a in arrays]


def previous(first, sequence):
    """The value entering each step: `[first, sequence[0], ..., sequence[-2]]` along axis 0."""
    return tf.concat([first[None], sequence[:-1]], 0)


def time_matmul(a, b):
    """`sum_t a_t^T @ b_t` for time-major `a (time, batch, m)`, `b (time, batch, n)`: `(m, n)`, one matmul."""
    return tf.matmul(tf.reshape(a, (-1, a.shape[-1])), tf.reshape(b, (-1, b.shape[-1])), transpose_a=True)


def custom_loop(forward, backward):
    """A differentiable loop `(*inputs) -> outputs` from its compiled forward and backward.

    `forward(*inputs)` returns `(outputs, saved)`: the loop's outputs (a tensor or a
    tuple) and the tensors the backward keeps. `backward(d_outputs, inputs, outputs,
    saved)` returns the gradients of `inputs`; a `None` output gradient arrives as zeros.
    Tapes never differentiate the forward while loop itself.
    """

    @tf.custom_gradient
    def loop(*inputs):
        outputs, saved = forward(*(tf.stop_gradient(t) for t in inputs))

        def grad(*d_outputs):
            flat = outputs if isinstance(outputs, tuple) else (outputs,)
            d_outputs = [tf.zeros_like(o) if d is None else d for d, o in zip(d_outputs, flat)]
            return backward(d_outputs if isinstance(outputs, tuple) else d_outputs[0], inputs, outputs, saved)

        return outputs, grad

    return loop

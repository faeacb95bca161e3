"""Independent numpy implementations of the masked recurrences (test oracle)."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm(x, kernel, recurrent_kernel, bias, kernel_mask, recurrent_mask, h0=None, c0=None):
    """Masked LSTM over `x (batch, time, in)`, gates `[i, f, c, o]`.

    Returns `(outputs (batch, time, units), h, c)`.
    """
    w = kernel * kernel_mask
    u = recurrent_kernel * recurrent_mask
    batch, steps, _ = x.shape
    units = u.shape[0]
    h = np.zeros((batch, units)) if h0 is None else h0
    c = np.zeros((batch, units)) if c0 is None else c0
    outputs = []
    for t in range(steps):
        z = x[:, t] @ w + h @ u + bias
        i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, 1), h, c


def gru(x, kernel, recurrent_kernel, bias, kernel_mask, recurrent_mask, reset_after=True):
    """Masked GRU over `x (batch, time, in)`, gates `[z, r, h]`.

    `bias` is `(2, 3 * units)` with `reset_after`, else `(3 * units,)`.
    Returns `(outputs (batch, time, units), h)`.
    """
    w = kernel * kernel_mask
    u = recurrent_kernel * recurrent_mask
    batch, steps, _ = x.shape
    units = u.shape[0]
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
    h = np.zeros((batch, units))
    outputs = []
    for t in range(steps):
        xz, xr, xh = np.split(x[:, t] @ w + b_in, 3, axis=-1)
        uz, ur, uh = np.split(u, 3, axis=-1)
        bz, br, bh = np.split(b_rec, 3)
        z = sigmoid(xz + h @ uz + bz)
        r = sigmoid(xr + h @ ur + br)
        if reset_after:
            hh = np.tanh(xh + r * (h @ uh + bh))
        else:
            hh = np.tanh(xh + (r * h) @ uh)
        h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, 1), h

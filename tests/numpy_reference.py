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


def rhn(x, kernel, recurrent_kernels, bias, couple_carry=True):
    """Recurrent highway network over `x (batch, time, in)`; gates `[h, t]` or `[h, t, c]`.

    `recurrent_kernels`: one `(units, G * units)` matrix per depth level; `bias`
    `(depth, G * units)`. Returns `(outputs (batch, time, units), s)`.
    """
    batch, steps, _ = x.shape
    units = recurrent_kernels[0].shape[0]
    s = np.zeros((batch, units))
    outputs = []
    for t in range(steps):
        for level, r in enumerate(recurrent_kernels):
            z = s @ r + bias[level] + (x[:, t] @ kernel if level == 0 else 0.0)
            h_gate = np.tanh(z[:, :units])
            t_gate = sigmoid(z[:, units : 2 * units])
            c_gate = 1.0 - t_gate if couple_carry else sigmoid(z[:, 2 * units :])
            s = h_gate * t_gate + s * c_gate
        outputs.append(s)
    return np.stack(outputs, 1), s


def onlstm(x, kernel, recurrent_kernel, bias, chunk_size):
    """Ordered-neurons LSTM; gates `[master_f, master_i, i, f, c, o]`.

    Returns `(outputs (batch, time, units), h, c)`.
    """
    batch, steps, _ = x.shape
    units = recurrent_kernel.shape[0]
    n = units // chunk_size

    def cumax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return np.cumsum(e / e.sum(-1, keepdims=True), -1)

    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    outputs = []
    for t in range(steps):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        master_f = np.repeat(cumax(z[:, :n]), chunk_size, -1)
        master_i = np.repeat(1.0 - cumax(z[:, n : 2 * n]), chunk_size, -1)
        zi, zf, zc, zo = np.split(z[:, 2 * n :], 4, -1)
        w = master_f * master_i
        f = sigmoid(zf) * w + (master_f - w)
        i = sigmoid(zi) * w + (master_i - w)
        c = f * c + i * np.tanh(zc)
        h = sigmoid(zo) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, 1), h, c

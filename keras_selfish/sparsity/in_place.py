"""Writing a topology change straight into the buffers of CPU variables (numba).

A TensorFlow rewrite of a weight (`v.assign(where(keep, v, 0))`) allocates a fresh
output the size of the weight, and first touches of fresh memory (page faults)
cost about 1 ms per MB on the machines this was measured on: for a 2 x 1500 LSTM
language model that made rewriting masks, weights and momentum a third of a
topology update. Here the same values are written into the memory the variables
already own, in one compiled pass per variable that releases the GIL.

This bypasses TensorFlow's copy-on-write of variable reads, so it is used only
where a read is known to alias the variable's live buffer: a plain (not
distributed) variable on the CPU whose two consecutive reads return the same
memory (not in copy-on-read mode). `buffer_of` returns None otherwise, and the
caller falls back to TensorFlow ops. Tensors read from the variable earlier and
still alive would see the new values; the callbacks of this package hold none
between updates.
"""

import ctypes

import numba
import numpy as np
import tensorflow as tf

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the compiled kernels take


class Buffer:
    """A writable flat numpy view of a variable's memory, valid while this object lives.

    Attributes:
        array: 1-D numpy array over the variable's buffer.
    """

    def __init__(self, tensor, array):
        self._tensor = tensor  # keeps the memory alive
        self.array = array


def buffer_of(variable):
    """A `Buffer` over the memory of `variable` (a keras or tf variable), or None.

    None unless the variable is a plain float32/float64 variable whose reads alias
    its buffer (CPU, not distributed, not in copy-on-read mode).
    """
    backing = variable if isinstance(variable, tf.Variable) else getattr(variable, "value", None)
    if not isinstance(backing, tf.Variable) or isinstance(backing, tf.distribute.DistributedValues):
        return None
    if np.dtype(backing.dtype.as_numpy_dtype) not in DTYPES:
        return None
    first, second = tf.convert_to_tensor(backing), tf.convert_to_tensor(backing)
    if "CPU" not in first.device.upper():
        return None
    view, again = np.asarray(first), np.asarray(second)
    if view.size == 0 or view.ctypes.data != again.ctypes.data or not view.flags.c_contiguous:
        return None
    memory = (ctypes.c_char * view.nbytes).from_address(view.ctypes.data)
    return Buffer(first, np.frombuffer(memory, dtype=view.dtype))


@numba.njit(nogil=True)
def keep_survivors(survivors, values):
    """`values[p] = 0` wherever `survivors[p]` is False (in place; NaN included)."""
    for p in range(values.size):
        values[p] = values[p] if survivors[p] else 0.0


@numba.njit(nogil=True)
def write_mask(new_mask, mask):
    """`mask[p] = 1.0 if new_mask[p] else 0.0` (in place)."""
    for p in range(mask.size):
        mask[p] = 1.0 if new_mask[p] else 0.0


def warm_up(dtype):
    """Compile the kernels for variables of `dtype` (once per process)."""
    if np.dtype(dtype) in DTYPES:
        flags = np.ones(2, dtype=bool)
        values = np.ones(2, dtype=dtype)
        keep_survivors(flags, values)
        write_mask(flags, values)

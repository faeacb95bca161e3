"""Writing a topology change straight into the buffers of CPU variables (numba).

A TensorFlow rewrite of a weight (`v.assign(where(keep, v, 0))`) allocates a fresh
output the size of the weight, and first touches of fresh memory (page faults)
cost about 1 ms per MB on the machines this was measured on: for a 2 x 1500 LSTM
language model that made rewriting masks, weights and momentum a third of a
topology update. Here the same values are written into the memory the variables
already own, in one compiled pass per variable that releases the GIL.

Why such a write is safe. TensorFlow shares buffers freely: `b.assign(a)` (keras
or tf variables, e.g. weights copied between models, SNT-ASGD averages swapped in
by `averaged_weights`, a checkpoint restored from tensors) makes `b` adopt the
buffer `a` holds, and every read returns a tensor over the variable's buffer. TF's
own writes stay correct by copy-on-write: an op that updates a variable in place
first copies its buffer unless the variable holds the only reference. A write from
here bypasses that check, so `buffer_of` makes it true first, at the moment of the
write, instead of trusting how the buffer got there:

1. it only handles plain float32/float64 CPU variables whose two consecutive reads
   alias (not distributed, not in copy-on-read mode); anything else returns None
   and the caller uses TensorFlow ops;
2. it runs a one-element sparse read of the variable (`ResourceGather`). TF's
   sparse access first gives the variable a buffer of its own: if any other
   tensor or variable references the buffer, the variable gets a fresh copy
   (`EnsureSparseVariableAccess`, which then switches it to copy-on-read mode);
   otherwise nothing is copied. `DisableCopyOnRead` switches the mode back;
3. it then reads the variable once more and hands out a view of that buffer.

After step 2 the variable holds the only reference; between steps 2 and the end
of the write only this caller runs and only it reads the variable, so whatever
earlier code shared the buffer (variables, live tensors, numpy views of reads), the
write reaches this variable alone, and the others keep their values: the semantics
of a TF assign. Nothing has to be re-checked between train begin and an update, as
every write re-establishes ownership. The copy happens only when the buffer really
was shared (then once: the variable keeps the copy); normally step 2 costs two tiny
ops. A caller must not read the variable between `buffer_of` and the write, except
through the returned view.
"""

import ctypes

import numba
import numpy as np
import tensorflow as tf

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the compiled kernels take
_FIRST = np.zeros(1, dtype=np.int64)  # index of the one-element sparse read


class Buffer:
    """A writable flat numpy view of a variable's memory, valid while this object lives.

    Attributes:
        array: 1-D numpy array over the variable's buffer.
    """

    def __init__(self, tensor, array):
        self._tensor = tensor  # keeps the memory alive
        self.array = array


def _reads_alias(backing):
    """Whether reads of the non-empty `backing` alias its buffer (CPU, not copy-on-read)."""
    first, second = tf.convert_to_tensor(backing), tf.convert_to_tensor(backing)
    if "CPU" not in first.device.upper():
        return False
    view, again = np.asarray(first), np.asarray(second)
    return view.ctypes.data == again.ctypes.data and view.flags.c_contiguous


def buffer_of(variable):
    """A `Buffer` over the memory of `variable` (a keras or tf variable), which the
    variable then owns alone (see the module docstring), or None.

    None unless the variable is a plain float32/float64 variable whose reads alias
    its buffer (CPU, not distributed, not in copy-on-read mode). Write through the
    returned buffer right away, without reading the variable in between.
    """
    backing = variable if isinstance(variable, tf.Variable) else getattr(variable, "value", None)
    if not isinstance(backing, tf.Variable) or isinstance(backing, tf.distribute.DistributedValues):
        return None
    if np.dtype(backing.dtype.as_numpy_dtype) not in DTYPES or backing.shape.rank == 0 or backing.shape.num_elements() == 0:
        return None
    if not _reads_alias(backing):
        return None
    # The probe's reads are gone: make the buffer the variable's alone, then view it.
    tf.raw_ops.ResourceGather(resource=backing.handle, indices=_FIRST, dtype=backing.dtype)
    tf.raw_ops.DisableCopyOnRead(resource=backing.handle)
    tensor = tf.convert_to_tensor(backing)
    view = np.asarray(tensor)
    memory = (ctypes.c_char * view.nbytes).from_address(view.ctypes.data)
    return Buffer(tensor, np.frombuffer(memory, dtype=view.dtype))


@numba.njit(nogil=True, cache=True)
def keep_survivors(survivors, values):
    """`values[p] = 0` wherever `survivors[p]` is False (in place; NaN included)."""
    for p in range(values.size):
        values[p] = values[p] if survivors[p] else 0.0


@numba.njit(nogil=True, cache=True)
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

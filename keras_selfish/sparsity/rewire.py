"""Apply a topology change to a masked weight, its values and the optimizer's state."""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_selfish.keras_private import variable_index
from keras_selfish.sparsity import in_place


def _optimizers(optimizer):
    """The optimizer and, for wrappers such as `LossScaleOptimizer`, the ones inside."""
    while optimizer is not None:
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


def optimizer_slots(optimizer, variable):
    """Every per-weight state variable an optimizer keeps for `variable`.

    Found generically: any list attribute of the optimizer that holds one variable
    per trainable variable (SGD momentums, Adam m and v, RMSprop, EMA averages,
    gradient accumulators, SNT-ASGD averages and step counters), so optimizers
    written later need no registration.

    Returns:
        list of `keras.Variable` shaped like `variable` (empty if the optimizer is
        None or not built yet).
    """
    slots = []
    for opt in _optimizers(optimizer):
        trainable = getattr(opt, "_trainable_variables", None)
        if not getattr(opt, "built", False) or not trainable:
            continue
        try:
            index = variable_index(opt, variable)
        except KeyError:
            continue
        for name, value in vars(opt).items():
            if name == "_trainable_variables" or not isinstance(value, (list, tuple)) or len(value) != len(trainable):
                continue
            slot = value[index]
            if isinstance(slot, keras.Variable) and slot is not variable and tuple(slot.shape) == tuple(variable.shape):
                slots.append(slot)
    return slots


def momentum_slot(optimizer, variable):
    """The momentum (first moment) the optimizer keeps for `variable`.

    SGD keeps it in `momentums` (only when `momentum > 0`), Adam-like optimizers in
    `_momentums`.

    Raises:
        ValueError: the optimizer keeps no momentum.
    """
    for opt in _optimizers(optimizer):
        for name in ("momentums", "_momentums"):
            values = getattr(opt, name, None)
            if values:
                return values[variable_index(opt, variable)]
    raise ValueError(
        f"grow='momentum' (SNFS) grows where the optimizer's momentum is largest, but "
        f"{type(optimizer).__name__} keeps no momentum. Use SGD(momentum=0.9), Adam, or "
        f"another optimizer with a first moment, or grow='random'/'gradient'."
    )


def read_only(variable):
    """The current value of a variable as a read-only numpy array, without a copy.

    (`keras.ops.convert_to_tensor(variable)` would copy; reading the backing
    `tf.Variable` returns a tensor that shares its buffer.)
    """
    return np.asarray(tf.convert_to_tensor(variable.value))


class Change(NamedTuple):
    """One topology update of a matrix, as dense boolean maps.

    Attributes:
        survivors: True where the weight is active before and after the update.
        new_mask: True where it is active after the update.
        dropped, grown: how many weights were dropped and grown (a weight dropped
            and grown again counts in both).
    """

    survivors: np.ndarray
    new_mask: np.ndarray
    dropped: int
    grown: int

    @classmethod
    def from_positions(cls, mask, dropped, grown):
        """The change that deactivates flat positions `dropped`, then activates `grown`."""
        survivors = np.asarray(mask) != 0
        survivors.reshape(-1)[dropped] = False
        new_mask = survivors.copy()
        new_mask.reshape(-1)[grown] = True
        return cls(survivors, new_mask, len(dropped), len(grown))


def rewire(mw, change, optimizer=None):
    """Write one topology update into a masked weight.

    The mask becomes `change.new_mask`. The weight and every optimizer slot keep
    their values only where the weight survives (`change.survivors`); everywhere
    else they are set to exactly 0, so grown weights (and a weight dropped and
    grown again in the same update) restart at 0 with fresh optimizer state. (Slot
    values at inactive positions never reach the weights.)

    Plain CPU variables are rewritten in their own memory by compiled passes that
    release the GIL (`in_place`), so updates of several matrices can run in
    threads; other variables (distributed, on an accelerator, other dtypes) by
    whole-tensor TensorFlow ops. No host copy of a weight or slot is made. Either
    way only these variables change: a buffer shared with another variable or a
    live tensor (after `b.assign(a)`, say) is first copied, as TensorFlow's own
    writes do, so `a` keeps its values.

    Args:
        mw: the `MaskedWeight`.
        change: a `Change` (maps flat or shaped like the weight).
        optimizer: the model's optimizer, or None.
    """
    survivors, keep = np.ascontiguousarray(change.survivors).reshape(-1), None
    buffer = in_place.buffer_of(mw.mask)
    if buffer is not None:
        in_place.write_mask(np.ascontiguousarray(change.new_mask).reshape(-1), buffer.array)
    else:
        mw.mask.assign(keras.ops.cast(change.new_mask.reshape(mw.shape), mw.mask.dtype))
    for variable in [mw.variable, *optimizer_slots(optimizer, mw.variable)]:
        buffer = in_place.buffer_of(variable)
        if buffer is not None:
            in_place.keep_survivors(survivors, buffer.array)
        else:
            if keep is None:
                keep = keras.ops.convert_to_tensor(survivors.reshape(mw.shape))
            variable.assign(keras.ops.where(keep, variable, keras.ops.zeros((), variable.dtype)))

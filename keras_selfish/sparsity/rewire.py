"""Apply a topology change to a masked weight, its values and the optimizer's state."""

import keras
import numpy as np


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
            index = opt._get_variable_index(variable)
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
                return values[opt._get_variable_index(variable)]
    raise ValueError(
        f"grow='momentum' (SNFS) grows where the optimizer's momentum is largest, but "
        f"{type(optimizer).__name__} keeps no momentum. Use SGD(momentum=0.9), Adam, or "
        f"another optimizer with a first moment, or grow='random'/'gradient'."
    )


def read_only(variable):
    """The current value of a variable as a read-only numpy array, without a copy."""
    return np.asarray(keras.ops.convert_to_tensor(variable))


def rewire(mw, mask, dropped, grown, optimizer=None):
    """Write one topology update into a masked weight.

    Dropped positions become inactive, grown ones active. The weight and every
    optimizer slot keep their values only where the weight was active and stays
    active; everywhere else they are set to exactly 0, so grown weights (and a
    weight dropped and grown again in the same update) restart at 0 with fresh
    optimizer state. (Slot values at inactive positions never reach the weights.)
    The variables are rewritten by whole-tensor TensorFlow ops, which run on all
    cores; no host copy of the weight or slots is made.

    Args:
        mw: the `MaskedWeight`.
        mask: its current mask (numpy, not modified).
        dropped, grown: flat positions.
        optimizer: the model's optimizer, or None.

    Returns:
        the new mask as a boolean numpy array.
    """
    survivors = np.asarray(mask) != 0
    survivors.reshape(-1)[dropped] = False
    new_mask = survivors.copy()
    new_mask.reshape(-1)[grown] = True
    keep = keras.ops.convert_to_tensor(survivors)
    mw.mask.assign(keras.ops.cast(new_mask, mw.mask.dtype))
    for variable in [mw.variable, *optimizer_slots(optimizer, mw.variable)]:
        variable.assign(keras.ops.where(keep, variable, keras.ops.zeros((), variable.dtype)))
    return new_mask

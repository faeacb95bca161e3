"""Apply a topology change to a masked weight, its values and the optimizer's state."""

import keras


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


def rewire(mw, mask, values, dropped, grown, optimizer=None):
    """Write one topology update into a masked weight.

    Dropped positions become inactive, grown ones active; the weight and every
    optimizer slot are reset to exactly 0 at all changed positions (a position
    dropped and grown again in the same update restarts at 0 too).

    Args:
        mw: the `MaskedWeight`.
        mask, values: current numpy copies of the mask and weight (modified in place).
        dropped, grown: flat positions.
        optimizer: the model's optimizer, or None.
    """
    flat_mask, flat_values = mask.reshape(-1), values.reshape(-1)
    flat_mask[dropped] = 0
    flat_mask[grown] = 1
    flat_values[dropped] = 0
    flat_values[grown] = 0
    mw.mask.assign(mask)
    mw.variable.assign(values)
    for slot in optimizer_slots(optimizer, mw.variable):
        state = slot.numpy()
        flat_state = state.reshape(-1)
        flat_state[dropped] = 0
        flat_state[grown] = 0
        slot.assign(state)


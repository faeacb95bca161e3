"""Evaluate with SNT-ASGD's averaged weights, restoring the raw weights bit-exactly."""

import contextlib
import weakref

from keras import ops

from keras_selfish.optimizers.sntasgd import SNTASGD
from keras_selfish.sparsity.masked_weight import mask_of

# SNTASGD -> copies of the raw (training) weights while `averaged_weights` holds the averages in.
_RAW_WHILE_SWAPPED = weakref.WeakKeyDictionary()


def averaging_optimizer(model):
    """The model's `SNTASGD` (unwrapping `LossScaleOptimizer`), or None."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if isinstance(optimizer, SNTASGD) else None


@contextlib.contextmanager
def averaged_weights(model):
    """Context in which the model's trainable weights hold their SNT-ASGD averages.

        with ks.optimizers.averaged_weights(model):
            model.evaluate(valid)        # or save / export the averaged model

    Does nothing (yields False) while averaging has not started or the model does
    not train with `SNTASGD`; otherwise yields True. Nested in another
    `averaged_weights` (e.g. the one `SwapAveragedWeights` holds open) it leaves the
    averages in place. On exit the raw weights are restored bit-exactly (from
    copies, not by arithmetic), times the current mask: a topology update made
    while the averages were in leaves its dropped weights at 0.
    """
    optimizer = averaging_optimizer(model)
    if optimizer is None or not optimizer.built or not optimizer.averaging:
        yield False
        return
    if optimizer in _RAW_WHILE_SWAPPED:
        yield True
        return
    pairs = optimizer.averages()
    raw = [ops.copy(variable) for variable, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    _RAW_WHILE_SWAPPED[optimizer] = raw
    try:
        yield True
    finally:
        del _RAW_WHILE_SWAPPED[optimizer]
        for (variable, _), value in zip(pairs, raw):
            _assign_raw(variable, value)


@contextlib.contextmanager
def raw_weights(model):
    """Context in which the trainable weights hold their raw (training) values.

    Inside an `averaged_weights` context (for instance while `SwapAveragedWeights`
    holds the averages in) it puts the raw weights back and, on exit, the averages
    again, bit-exactly (the raw weights times the current mask, as on leaving
    `averaged_weights`); otherwise it does nothing. Yields whether it swapped.
    `Checkpoint` and `BestWeights(averaged=False)` save through it, so their
    position in the callback list does not matter.
    """
    optimizer = averaging_optimizer(model)
    raw = None if optimizer is None else _RAW_WHILE_SWAPPED.pop(optimizer, None)
    if raw is None:
        yield False
        return
    variables = [variable for variable, _ in optimizer.averages()]
    held = [ops.copy(variable) for variable in variables]
    for variable, value in zip(variables, raw):
        _assign_raw(variable, value)
    try:
        yield True
    finally:
        for variable, value in zip(variables, held):
            variable.assign(value)
        _RAW_WHILE_SWAPPED[optimizer] = raw


def _assign_raw(variable, value):
    """Put a raw weight back, zero wherever its current mask is 0."""
    mask = mask_of(variable)
    variable.assign(value if mask is None else value * ops.cast(mask, value.dtype))

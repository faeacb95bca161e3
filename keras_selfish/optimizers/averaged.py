"""Evaluate with SNT-ASGD's averaged weights, restoring the raw weights bit-exactly."""

import contextlib

from keras import ops

from keras_selfish.optimizers.sntasgd import SNTASGD


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
    not train with `SNTASGD`; otherwise yields True. On exit the raw weights are
    restored bit-exactly (from copies, not by arithmetic).
    """
    optimizer = averaging_optimizer(model)
    if optimizer is None or not optimizer.built or not optimizer.averaging:
        yield False
        return
    pairs = optimizer.averages()
    raw = [ops.copy(variable) for variable, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield True
    finally:
        for (variable, _), value in zip(pairs, raw):
            variable.assign(value)

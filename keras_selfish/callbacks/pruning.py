"""Gradual magnitude pruning (Zhu & Gupta, 2017): the dense-to-sparse baseline."""

import numpy as np

from keras_selfish.callbacks.topology_update import TopologyUpdate
from keras_selfish.sparsity import topology
from keras_selfish.sparsity.rewire import Change


class GradualMagnitudePruning(TopologyUpdate):
    """Prunes every masked weight to a growing sparsity by weight magnitude.

    Every `frequency` steps from `begin_step` to `end_step` each masked matrix keeps
    its `round((1 - s_t) * size)` largest-magnitude weights, where `s_t` follows
    tensorflow-model-optimization's `PolynomialDecay` (from `initial_sparsity` to
    `final_sparsity` with exponent `power`). Pruned weights and their optimizer
    slots become exactly 0 and never grow back. Start from a dense model (masks all
    ones, i.e. without `ks.sparsity.initialize`). A matrix with block masks
    (`MaskedWeight.block_size`, e.g. set by `ks.sparsity.initialize(model, 1.0,
    block_size=16)`) keeps its `round((1 - s_t) * blocks)` blocks of largest L1
    norm and prunes whole blocks.

    As every `TopologyUpdate`, it stops pruning once the loss is NaN or infinite,
    and refuses (ValueError naming the matrix) to prune NaN or infinite weights.

    Args:
        final_sparsity: sparsity reached at `end_step`, in (0, 1).
        begin_step: first step that prunes.
        end_step: step at which `final_sparsity` is reached; default the last step of
            the `fit` call.
        frequency: prune every this many optimizer steps.
        initial_sparsity: sparsity of the schedule at `begin_step`.
        power: exponent of the polynomial schedule (Zhu & Gupta: 3).
        exclude, verbose: as in `DropAndGrow`.
    """

    def __init__(self, final_sparsity, begin_step=0, end_step=None, frequency=100, initial_sparsity=0.0, power=3, exclude=(), verbose=1):
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency must be a positive number of steps, got {frequency!r}.")
        super().__init__(update_every=frequency, end_step=end_step, exclude=exclude, verbose=verbose)
        if not 0.0 < final_sparsity < 1.0:
            raise ValueError(f"final_sparsity must be in (0, 1), got {final_sparsity!r}.")
        if not 0.0 <= initial_sparsity < final_sparsity:
            raise ValueError(f"initial_sparsity must be in [0, final_sparsity), got {initial_sparsity!r}.")
        if not isinstance(begin_step, int) or begin_step < 0:
            raise ValueError(f"begin_step must be a non-negative integer, got {begin_step!r}.")
        if end_step is not None and end_step <= begin_step:
            raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step}).")
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step = begin_step
        self.frequency = frequency
        self.power = power

    def sparsity(self, step):
        """Target sparsity `s_t` of tfmot's `PolynomialDecay` at optimizer step `step`."""
        from tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule import PolynomialDecay

        schedule = PolynomialDecay(self.initial_sparsity, self.final_sparsity, self.begin_step, self._end, self.power, self.frequency)
        return float(schedule(min(step, self._end))[1])

    def should_update(self, step):
        return step >= self.begin_step

    def prepare(self, step):
        return {"target_sparsity": self.sparsity(step)}

    def update_weight(self, index, mw, mask, values, step, info):
        keep = int(round((1.0 - info["target_sparsity"]) * mw.blocks.count))
        dropped = topology.magnitude_prune(values, mask, keep, mw.block_size, mw.blocks.axis)
        return Change.from_positions(mask, dropped, np.zeros(0, dtype=np.int64))

"""The masked-weight protocol: how sparse layers expose their weights and masks.

A sparse layer owns, for every sparse matrix `W`, a non-trainable 0/1 variable `M`
of the same shape. The invariant is `W == W * M` at all times: inactive weights are
exactly zero. It is established by `ks.sparsity.initialize` (and every topology
update) and kept by a variable constraint `W <- W * M` that the optimizer runs after
every step, inside the compiled train step. Layers therefore compute with `W`
itself: no mask multiply in the forward or backward pass, and the gradient of an
inactive weight is the dense gradient `dL/dW` (what RigL and SNFS grow on, and what
the authors' reference code clips on); the constraint keeps it from ever moving
the weight. Code that assigns weights by hand must call `apply_masks` afterwards.

Everything that changes topology (initialisation, drop-and-grow, pruning) goes
through `MaskedWeight` records returned by `layer.masked_weights`, so any user
layer that implements that property (and this invariant) becomes sparsifiable.
"""

import dataclasses

import keras
import numpy as np

from keras_selfish.keras_private import flatten_layers
from keras_selfish.sparsity.blocks import Blocks


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedWeight:
    """One sparse matrix of a layer.

    Attributes:
        variable: the dense weight variable, e.g. an LSTM kernel `(input_dim, 4 * units)`.
        mask: non-trainable variable of the same shape holding 0.0 / 1.0.
        num_gates: how many gate blocks the matrix holds along `gate_axis`
            (4 for LSTM `[i, f, c, o]`, 3 for GRU `[z, r, h]`, 1 for Dense/Embedding).
        gate_axis: the axis along which the gate blocks are concatenated.
        gate_names: one short name per gate block, for summaries and logs.
        gate_sizes: sizes of the blocks along `gate_axis` when they differ (e.g.
            ON-LSTM's master gates are narrower); empty means equal blocks.
        block_axis: the axis along which mask blocks run: 0 for kernels
            `(input, units)` (their input axis), 1 for embedding tables
            `(vocab, features)` (their features: the input axis of a tied
            softmax's FULLY_CONNECTED weight, which is the table itself), or None
            for a weight that takes no blocks.
        block_size: the mask is made of whole blocks of this many consecutive
            entries along `block_axis` of one line across it (see
            `ks.sparsity.blocks`); 1 is unstructured.
            Set by `ks.sparsity.initialize(..., block_size=)` (`use_blocks`) and
            kept by every topology update.
    """

    variable: keras.Variable
    mask: keras.Variable
    num_gates: int = 1
    gate_axis: int = -1
    gate_names: tuple = ()
    gate_sizes: tuple = ()
    block_axis: object = 0
    block_size: int = 1

    def __post_init__(self):
        if tuple(self.variable.shape) != tuple(self.mask.shape):
            raise ValueError(
                f"Mask shape {tuple(self.mask.shape)} does not match weight "
                f"{self.variable.path} of shape {tuple(self.variable.shape)}."
            )
        if self.gate_sizes:
            if len(self.gate_sizes) != self.num_gates or sum(self.gate_sizes) != self.variable.shape[self.gate_axis]:
                raise ValueError(
                    f"Weight {self.variable.path}: gate_sizes {self.gate_sizes} must be "
                    f"num_gates={self.num_gates} sizes summing to {self.variable.shape[self.gate_axis]}."
                )
        elif self.variable.shape[self.gate_axis] % self.num_gates:
            raise ValueError(
                f"Weight {self.variable.path}: axis {self.gate_axis} of size "
                f"{self.variable.shape[self.gate_axis]} does not split into "
                f"num_gates={self.num_gates} equal blocks."
            )
        if not self.gate_names:
            names = tuple(str(g) for g in range(self.num_gates))
            object.__setattr__(self, "gate_names", names)
        elif len(self.gate_names) != self.num_gates:
            raise ValueError(
                f"gate_names {self.gate_names} must have num_gates="
                f"{self.num_gates} entries."
            )
        self.use_blocks(self.block_size)

    def use_blocks(self, block_size):
        """Record that the mask is made of whole blocks of `block_size` entries along `block_axis`.

        Raises:
            ValueError: the weight takes no blocks (`block_axis` None), or is not
                a 2-D matrix with blocks along axis 0 or 1 and its gates (if more
                than one) along the other axis.
        """
        block_size = int(block_size)
        if block_size > 1:
            if self.block_axis is None:
                raise ValueError(f"Weight {self.name} takes no blocks (block_axis=None); exclude it or use block_size=1.")
            if len(self.shape) != 2 or self.block_axis not in (0, 1) or (self.num_gates > 1 and self.gate_axis % 2 == self.block_axis):
                raise ValueError(
                    f"Weight {self.name}: blocks run along axis {self.block_axis} of a 2-D matrix with "
                    f"gates along axis {1 - (self.block_axis or 0)}; got shape {self.shape}, block_axis={self.block_axis}, "
                    f"gate_axis={self.gate_axis}."
                )
        object.__setattr__(self, "block_size", block_size)

    @property
    def blocks(self):
        """The `Blocks` of the mask (1 x 1 blocks when unstructured)."""
        return Blocks(self.shape, self.block_size, self.block_axis or 0)

    def __repr__(self):
        blocks = f", block_size={self.block_size}" if self.block_size > 1 else ""
        return f"MaskedWeight({self.name}, shape={self.shape}, gates={self.gate_names}{blocks})"

    @property
    def name(self):
        """Unique path of the weight in its model, e.g. `lstm/cell/kernel`."""
        return self.variable.path

    @property
    def shape(self):
        return tuple(self.variable.shape)

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def gate_sections(self):
        """`np.split` sections along `gate_axis`: the gate count, or split indices for unequal gates."""
        return list(np.cumsum(self.gate_sizes)[:-1]) if self.gate_sizes else self.num_gates

    def split_gates(self, array):
        """Gate blocks of an array shaped like the weight.

        Args:
            array: numpy array of shape `self.shape`.

        Returns:
            list of `num_gates` numpy arrays (views), one per gate block.
        """
        return np.split(np.asarray(array), self.gate_sections, axis=self.gate_axis % len(self.shape))


class MaskConstraint:
    """Variable constraint `w -> inner(w) * mask`, run by the optimizer after each step.

    Wraps the user's own constraint (if any), so masked weights stay exactly zero
    whatever the optimizer does (momentum, Adam, non-elementwise optimizers).
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * keras.ops.cast(self.mask, w.dtype)


def mask_of(variable):
    """The mask variable of a masked weight (from its `MaskConstraint`), or None."""
    constraint = getattr(variable, "constraint", None)
    return constraint.mask if isinstance(constraint, MaskConstraint) else None


def constraint_beyond_mask(variable):
    """What of `variable`'s constraint an update that already applied its mask must still run, or None.

    None for no constraint or a `MaskConstraint` with nothing inside; a masked
    weight's user constraint comes with its mask (`w -> inner(w) * mask`, so the
    mask holds after it); an unmasked weight's constraint as it is.
    """
    constraint = getattr(variable, "constraint", None)
    if isinstance(constraint, MaskConstraint) and constraint.inner is None:
        return None
    return constraint


class KeepsBlockSizes:
    """Layer mixin: the block sizes of the layer's masked weights travel in its config.

    `get_config` adds `mask_blocks: {weight name: block size}` for the weights with
    blocks (`MaskedWeight.block_size` > 1; nothing otherwise, so unstructured
    configs are unchanged); the constructor takes it back and `add_mask` gives each
    weight its size at build. So a layer rebuilt from its config (a `.keras` file,
    `from_config`) drops and grows whole blocks again; a config saved without
    `mask_blocks` builds with block size 1, as before.
    """

    def __init__(self, *args, mask_blocks=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_blocks = {str(name): int(size) for name, size in (mask_blocks or {}).items()}

    def get_config(self):
        config = super().get_config()
        blocks = {mw.variable.name: mw.block_size for mw in self.masked_weights if mw.block_size > 1}
        return {**config, "mask_blocks": blocks} if blocks else config


def add_mask(layer, weight, num_gates=1, gate_names=(), gate_sizes=(), block_axis=0):
    """Create the mask variable of `weight` in `layer` and attach the mask constraint.

    The mask is a non-trainable layer weight named `<weight>_mask`, initialised to
    all ones (dense until `ks.sparsity.initialize`), so it is saved, restored and
    exported with the model. It is stored as `layer.<weight>_mask`. `block_axis`:
    as in `MaskedWeight` (1 for an embedding table). The block size comes from the
    layer's config when it keeps one (`KeepsBlockSizes`), else 1.
    """
    mask = layer.add_weight(
        shape=weight.shape,
        name=f"{weight.name}_mask",
        initializer="ones",
        trainable=False,
        dtype=weight.dtype,
    )
    weight.constraint = MaskConstraint(mask, weight.constraint)
    setattr(layer, f"{weight.name}_mask", mask)
    block_size = getattr(layer, "mask_blocks", {}).get(weight.name, 1)
    return MaskedWeight(weight, mask, num_gates=num_gates, gate_names=tuple(gate_names), gate_sizes=tuple(gate_sizes), block_axis=block_axis, block_size=block_size)


def collect(model):
    """All masked weights of a model, in layer-traversal order, without duplicates.

    Walks every nested layer (Sequential, functional, subclassed models, RNN cells,
    `Bidirectional`, `TimeDistributed`) and asks each for `masked_weights`.

    Args:
        model: a built `keras.Layer` or `keras.Model`.

    Returns:
        list of `MaskedWeight`.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"collect() takes a keras Layer or Model, got {type(model).__name__}.")
    found, seen = [], set()
    for layer in flatten_layers(model):
        for mw in getattr(layer, "masked_weights", ()):
            if id(mw.mask) not in seen:
                seen.add(id(mw.mask))
                found.append(mw)
    return found


def apply_masks(model):
    """Set every masked weight to `W * M` (inactive weights become exactly 0).

    Returns:
        the list of `MaskedWeight` that was processed.
    """
    weights = collect(model)
    for mw in weights:
        mw.variable.assign(mw.variable * keras.ops.cast(mw.mask, mw.variable.dtype))
    return weights

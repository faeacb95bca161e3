"""Exact-count random sparse initialisation of a model's masked weights."""

import numpy as np

from keras_selfish.layers.arguments import positive_int
from keras_selfish.sparsity.distributions import active_counts
from keras_selfish.sparsity.distributions import check_density
from keras_selfish.sparsity.distributions import check_distribution
from keras_selfish.sparsity.masked_weight import collect


def _matches(mw, entry):
    return entry == mw.name or entry in mw.name.split("/")


def select(model, exclude=()):
    """Masked weights of `model` minus those named in `exclude`.

    Args:
        model: a built Keras model or layer.
        exclude: layer names or weight paths (a string or a list of them); an
            entry matches a weight if it is its full path or one component of it.

    Returns:
        `(included, excluded)`: two lists of `MaskedWeight`.

    Raises:
        ValueError: the model has no masked weights, or an `exclude` entry matches
            no masked weight.
    """
    weights = collect(model)
    if not weights:
        hint = "" if model.built else " The model is not built yet: call it on data or use model.build(input_shape) first."
        raise ValueError(
            f"Model {model.name!r} has no masked weights. Use keras_selfish.layers "
            f"(MaskedDense, MaskedEmbedding, SparseLSTM, SparseGRU, ...) or implement "
            f"`masked_weights` in your layer.{hint}"
        )
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    for entry in exclude:
        if not any(_matches(mw, entry) for mw in weights):
            raise ValueError(
                f"`exclude` entry {entry!r} names no masked weight. Masked weights: "
                f"{[mw.name for mw in weights]}."
            )
    excluded = [mw for mw in weights if any(_matches(mw, e) for e in exclude)]
    included = [mw for mw in weights if mw not in excluded]
    if not included:
        raise ValueError(f"`exclude`={exclude} excludes every masked weight; nothing to sparsify.")
    return included, excluded


def random_mask(shape, count, rng):
    """A 0/1 float32 array of `shape` with exactly `count` ones at random positions."""
    size = int(np.prod(shape))
    flat = np.zeros(size, dtype=np.float32)
    flat[rng.choice(size, size=count, replace=False)] = 1.0
    return flat.reshape(shape)


def initialize(model, density, distribution="uniform", seed=None, exclude=(), block_size=1):
    """Give every masked weight an exact-count random mask and zero its inactive weights.

    Active weights keep their initialiser values; inactive weights become exactly 0.
    Excluded weights get an all-ones mask (they stay dense and are not part of the
    budget).

    Args:
        model: a built Keras model containing masked layers.
        density: fraction of (non-excluded) masked weights kept active, in (0, 1].
        distribution: "uniform" (each matrix at `density`), "er" or "erk"
            (Erdos-Renyi scaling, total exactly `round(density * total)`).
        seed: int for reproducible masks, or None.
        exclude: layer names or weight paths to keep dense.
        block_size: masks of whole blocks of `block_size` consecutive inputs of one
            output unit (`b` rows of one column of a kernel `(input, units)`: the
            1 x b blocks of TFLite's FULLY_CONNECTED weights `(units, input)`;
            `b` consecutive features of one row of an embedding table
            `(vocab, features)`, which tied is the softmax's FULLY_CONNECTED
            weight: see `MaskedWeight.block_axis`). Counts are then in blocks: a
            matrix of n blocks gets exactly `round(density * n)` active
            (uniform), ER/ERK allocate blocks with the total exact in blocks; a
            partial last block (input size not a multiple of `block_size`) is one
            block. Weights that take no blocks (`block_axis=None`) stay
            unstructured, their units being weights. The block size is recorded
            on the masked weights (`MaskedWeight.block_size`), and every later
            topology update keeps it.

    Returns:
        list of the `MaskedWeight` that were sparsified.
    """
    density = check_density(density)
    distribution = check_distribution(distribution)
    block_size = positive_int("block_size", block_size)
    included, excluded = select(model, exclude)
    for mw in included + excluded:
        mw.use_blocks(1 if mw in excluded or mw.block_axis is None else block_size)
    grids = [mw.blocks.grid for mw in included]
    counts = active_counts([mw.shape for mw in included], density, distribution, units=[g[0] * g[1] for g in grids])
    rng = np.random.default_rng(seed)
    for mw, grid, count in zip(included, grids, counts):
        mask = mw.blocks.expand(random_mask(grid, count, rng)).reshape(mw.shape)
        mw.mask.assign(mask)
        mw.variable.assign(mw.variable.numpy() * mask)
    for mw in excluded:
        mw.mask.assign(np.ones(mw.shape, dtype=np.float32))
    return included

"""How a global density is split into exact active counts per matrix.

* `uniform`: every matrix of n weights gets exactly `round(density * n)` active.
* `er` / `erk` (Erdos-Renyi, Mocanu et al. 2018; kernel version, Evci et al. 2020):
  the density of a matrix is proportional to `sum(shape) / prod(shape)`, scaled by
  one factor so that the total is exactly `round(density * total)`. A matrix that
  would exceed density 1 is made dense and the others are rescaled (repeated until
  none exceeds 1). For 2-D matrices both names give the same allocation.
"""

import math

import numpy as np

DISTRIBUTIONS = ("uniform", "er", "erk")


def check_density(density, argument="density"):
    """Return `density` as a float in (0, 1] or raise a ValueError naming `argument`."""
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating, np.integer)):
        raise ValueError(f"`{argument}` must be a number in (0, 1], got {density!r}.")
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(
            f"`{argument}` must be in (0, 1] (the fraction of weights kept active), "
            f"got {density}. For 67% sparsity pass {argument}=0.33."
        )
    return density


def check_distribution(distribution):
    name = str(distribution).lower()
    if name not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown `distribution` {distribution!r}; expected one of {DISTRIBUTIONS}."
        )
    return name


def round_half_up(x):
    return int(math.floor(x + 0.5))


def active_counts(shapes, density, distribution="uniform", units=None):
    """Exact number of active weights (or blocks) for each matrix.

    Args:
        shapes: list of weight shapes (tuples of ints).
        density: fraction of weights kept active, in (0, 1].
        distribution: "uniform", "er" or "erk".
        units: how many units (mask blocks) each matrix has, when they are not
            its weights; the counts are then in units, the ER score still that of
            the weight shape.

    Returns:
        list of ints, one per shape, each in [0, units].
    """
    density = check_density(density)
    distribution = check_distribution(distribution)
    sizes = np.array(units if units is not None else [int(np.prod(s)) for s in shapes], dtype=np.int64)
    if distribution == "uniform":
        return [round_half_up(density * n) for n in sizes]

    scores = np.array([sum(s) / np.prod(s) for s in shapes], dtype=np.float64)
    target = round_half_up(density * sizes.sum())
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = target - sizes[dense].sum()
        scale = budget / np.sum(scores[~dense] * sizes[~dense])
        over = ~dense & (scale * scores > 1.0)
        if not over.any():
            break
        dense |= over
    exact = np.where(dense, sizes, scale * scores * sizes)
    counts = np.minimum(np.floor(exact).astype(np.int64), sizes)
    # Largest remainder: hand out the leftover units so the total is exact.
    shortfall = int(target - counts.sum())
    room = counts < sizes
    order = np.lexsort((np.arange(len(sizes)), -(exact - counts)))
    for i in order[room[order]][:shortfall]:
        counts[i] += 1
    return [int(c) for c in counts]

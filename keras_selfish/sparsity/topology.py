"""Exact drop-and-grow rules on one mask (numpy), the core of a topology update.

All rules keep the active count exact: `grow` re-activates exactly as many
positions as `drop` removed. Ties are broken deterministically by flat position
(lower first). The rules work on flat positions and run in time linear in the
matrix size (partitions, no sorts), so one update of a 2 x 1500 LSTM language model
stays fast.

* drop `magnitude`: the k active weights with the smallest |w|.
* drop `set` (SET): half the k from the smallest positive weights, half from the
  largest negative ones (both closest to zero); if one sign runs short, the other
  supplies the rest.
* grow `random`: k positions drawn uniformly among the inactive ones (positions
  dropped in this very update may be drawn again, as in the reference code).
* grow by score (`momentum` for SNFS, `gradient` for RigL): the k inactive positions
  with the largest |score|.

Non-finite input is refused: NaN has no order, so a rule given NaN weights (or
NaN scores) would drop or grow fewer than k and the count would change. The drop
rules and score growth raise `NonFiniteValues` when an active weight (a candidate
score) is NaN or infinite, instead of returning a wrong-sized update.
"""

import math

import numpy as np

from keras_selfish.sparsity.selection import kth_smallest_in_place


class NonFiniteValues(ValueError):
    """A topology update met NaN or infinite values and refused to run.

    Attributes:
        count: how many of the values were not finite.
        total: how many values the rule looked at.
        what: which values ("active weights", "growth scores").
        matrix: the matrix, when known.
    """

    def __init__(self, count, total, what, matrix=None):
        self.count, self.total, self.what, self.matrix = count, total, what, matrix
        of = f" of {matrix}" if matrix else ""
        super().__init__(
            f"Cannot update the topology{of}: {count:,} of its {total:,} {what} are NaN or infinite, "
            f"so the weights to drop or grow are undefined and the parameter count would change. "
            f"Training has diverged: resume from the last checkpoint with finite weights and lower "
            f"the learning rate or clip gradients (e.g. clipnorm=0.25, as in the paper); "
            f"ks.callbacks.StopOnNaN stops a run at its first non-finite loss."
        )

    def of(self, matrix):
        """The same error, naming `matrix`."""
        return NonFiniteValues(self.count, self.total, self.what, matrix)


def check_finite(values, what):
    """Raise `NonFiniteValues` if any of `values` (1-D) is NaN or infinite."""
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise NonFiniteValues(bad, values.size, what)


def cosine_drop_rate(step, total_steps, initial, final=0.005):
    """`final + (initial - final) * (1 + cos(pi * step / total_steps)) / 2`, clamped at the end."""
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 + math.cos(math.pi * progress)) / 2.0


def drop_count(active, rate):
    """`ceil(rate * active)`, at most `active`."""
    return min(active, math.ceil(rate * active - 1e-9))


def _smallest(keys, k):
    """Indices of the k smallest `keys`, ties by index (lower first), in linear time."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= len(keys):
        return np.arange(len(keys))
    # A copy (16-bit floats widened: the same order and ties) to reorder.
    threshold = kth_smallest_in_place(keys.astype(np.float64 if keys.dtype == np.float64 else np.float32), k)[0]
    chosen = keys <= threshold
    surplus = int(np.count_nonzero(chosen)) - k
    if surplus:  # keep only the lowest-position ties
        ties = np.flatnonzero(keys == threshold)
        chosen[ties[len(ties) - surplus :]] = False
    return np.flatnonzero(chosen)


def magnitude_drop(values, active, k):
    """The k active weights with the smallest |w|.

    Args:
        values: flat weights.
        active: ascending flat positions of the active weights.
        k: how many to drop.

    Returns:
        indices into `active` of the dropped weights.

    Raises:
        NonFiniteValues: an active weight is NaN or infinite.
    """
    magnitudes = np.abs(values[active])
    check_finite(magnitudes, "active weights")
    return _smallest(magnitudes, k)


def set_drop(values, active, k):
    """SET drop: about half the k from the smallest positive, half from the largest negative weights.

    Arguments and result as in `magnitude_drop`.
    """
    active_values = values[active]
    check_finite(active_values, "active weights")
    positive = np.flatnonzero(active_values > 0)
    negative = np.flatnonzero(active_values <= 0)
    from_positive = min(len(positive), max(k - len(negative), (k + 1) // 2))
    dropped_positive = positive[_smallest(active_values[positive], from_positive)]
    dropped_negative = negative[_smallest(-active_values[negative], k - from_positive)]
    return np.concatenate([dropped_positive, dropped_negative])


def random_grow(size, survivors, k, rng, taken=None):
    """k positions drawn uniformly (without replacement) among those not in `survivors`.

    Draws positions uniformly from the whole matrix (sorted, for cache-friendly
    look-ups), keeps the free ones once each, and repeats until at least k are
    found; a uniformly chosen surplus is then discarded. Every step treats the free
    positions symmetrically, so the result is a uniform k-subset; the work grows
    with k, not with `size`.

    Args:
        size: number of positions of the matrix.
        survivors: flat positions that stay active (never chosen); may be None
            when `taken` is given.
        k: how many to grow.
        rng: `np.random.Generator`.
        taken: optional flat boolean array, True at the positions that are not
            free (the survivors); the grown positions are set to True in it.

    Returns:
        array of k distinct flat positions, ascending.
    """
    if taken is None:
        taken = np.zeros(size, dtype=bool)
        taken[survivors] = True
    free = size - int(np.count_nonzero(taken))
    if k > free:
        raise ValueError(f"Cannot grow {k} weights: only {free} positions are free.")
    index_dtype = np.int32 if size < 2**31 else np.int64
    chosen = []
    need = k
    while need:
        target = min(need + 3 * math.sqrt(need) + 8, free)
        accepted = free * 8.0 if target >= free else -free * math.log1p(-target / free)
        draws = rng.integers(0, size, size=int(accepted * size / free) + 1, dtype=index_dtype)
        draws.sort()
        keep = taken[draws]
        np.logical_not(keep, out=keep)
        keep[1:] &= draws[1:] != draws[:-1]  # one copy of every repeated position
        draws = draws[keep]
        if len(draws) > need:
            draws = np.delete(draws, rng.choice(len(draws), len(draws) - need, replace=False))
        taken[draws] = True
        chosen.append(draws)
        need -= len(draws)
        free -= len(draws)
    if len(chosen) == 1:
        return chosen[0]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=index_dtype)


def score_grow(scores, survivors, k):
    """The k positions not in `survivors` with the largest |score|, ties by position.

    Raises:
        NonFiniteValues: a score at a position not in `survivors` is NaN or infinite.
    """
    free = np.ones(scores.size, dtype=bool)
    free[survivors] = False
    candidates = np.flatnonzero(free)
    keys = -np.abs(scores.reshape(-1)[candidates])
    check_finite(keys, "growth scores")
    return candidates[_smallest(keys, k)]


DROP_RULES = {"magnitude": magnitude_drop, "set": set_drop}


def drop_and_grow(values, mask, rate, drop="magnitude", grow="random", scores=None, rng=None):
    """One topology update of one matrix or gate block.

    Args:
        values: weights, any shape.
        mask: array of the same shape, nonzero = active.
        rate: drop rate; `ceil(rate * active)` weights are dropped and as many grown.
        drop: "magnitude" or "set".
        grow: "random" or "score" (then `scores` holds momentum or gradient).
        scores: array like `values`, for score growth.
        rng: `np.random.Generator`, for random growth.

    Returns:
        `(dropped, grown)`: flat positions dropped and grown (a position may be in
        both: dropped, then drawn again).

    Raises:
        NonFiniteValues: an active weight or a candidate score is NaN or infinite.
    """
    flat_values = np.asarray(values).reshape(-1)
    taken = np.asarray(mask).reshape(-1) != 0
    active = np.flatnonzero(taken)
    k = drop_count(len(active), rate)
    dropped = active[DROP_RULES[drop](flat_values, active, k)]
    if grow == "random":
        taken[dropped] = False
        grown = random_grow(flat_values.size, None, k, rng, taken=taken)
    else:
        grown = score_grow(np.asarray(scores), np.setdiff1d(active, dropped, assume_unique=True), k)
    return dropped, grown


def _block_positions(shape, gate_sections, gate_axis):
    """Flat positions of the matrix, one array per gate block."""
    positions = np.arange(int(np.prod(shape))).reshape(shape)
    return [b.reshape(-1) for b in np.split(positions, gate_sections, axis=gate_axis)]


def update_matrix(values, mask, rate, drop="magnitude", grow="random", scores=None, rng=None, gate_sections=1, gate_axis=-1, gate_wise=False):
    """Drop-and-grow on one gate-concatenated matrix.

    Cross-gate (default): one update over the whole matrix, so its active count is
    fixed but gates compete for it. Gate-wise: each gate block along `gate_axis`
    is updated on its own and keeps its own count.

    Args:
        values: weights of the matrix, e.g. `(input_dim, 4 * units)`.
        mask: array of the same shape, nonzero = active.
        rate, drop, grow, scores, rng: as in `drop_and_grow`.
        gate_sections, gate_axis: the gate layout of the matrix (`np.split`
            sections: a gate count, or split indices for unequal gates).
        gate_wise: update every gate block separately.

    Returns:
        `(dropped, grown)`: flat positions in the whole matrix.

    Raises:
        NonFiniteValues: an active weight or a candidate score is NaN or infinite.
    """
    values, mask = np.asarray(values), np.asarray(mask)
    if not gate_wise or gate_sections == 1:
        return drop_and_grow(values, mask, rate, drop, grow, scores, rng)
    check_finite(values[mask != 0], "active weights")  # counted over the whole matrix
    blocks = _block_positions(values.shape, gate_sections, gate_axis)
    dropped, grown = [], []
    for positions in blocks:
        block_scores = None if scores is None else np.asarray(scores).reshape(-1)[positions]
        d, g = drop_and_grow(values.reshape(-1)[positions], mask.reshape(-1)[positions], rate, drop, grow, block_scores, rng)
        dropped.append(positions[d])
        grown.append(positions[g])
    return np.concatenate(dropped), np.concatenate(grown)

"""Exact drop-and-grow rules on one mask (numpy), the core of a topology update.

All rules work on flat views of one matrix (or one gate block) and keep the active
count exact: `grow` re-activates exactly as many positions as `drop` removed.
Ties are broken deterministically by flat position (lower index first).

* drop `magnitude`: the k active weights with the smallest |w|.
* drop `set` (SET): half the k from the smallest positive weights, half from the
  largest negative ones (both closest to zero); if one sign runs short, the other
  supplies the rest.
* grow `random`: k positions drawn uniformly among the inactive ones (positions
  dropped in this very update may be drawn again, as in the reference code).
* grow by score (`momentum` for SNFS, `gradient` for RigL): the k inactive positions
  with the largest |score|.
"""

import math

import numpy as np


def cosine_drop_rate(step, total_steps, initial, final=0.005):
    """`final + (initial - final) * (1 + cos(pi * step / total_steps)) / 2`, clamped at the end."""
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 + math.cos(math.pi * progress)) / 2.0


def drop_count(active, rate):
    """`ceil(rate * active)`, at most `active`."""
    return min(active, math.ceil(rate * active - 1e-9))


def _smallest(keys, candidates, k):
    """The k candidates with the smallest key, ties by position."""
    order = np.lexsort((candidates, keys[candidates]))
    return candidates[order[:k]]


def magnitude_drop(values, mask, k):
    """Positions of the k active weights with the smallest magnitude."""
    active = np.flatnonzero(mask)
    return _smallest(np.abs(values), active, k)


def set_drop(values, mask, k):
    """SET drop: about half the k from the smallest positive, half from the largest negative weights."""
    active = np.flatnonzero(mask)
    positive = active[values[active] > 0]
    negative = active[values[active] <= 0]
    from_positive = min(len(positive), max(k - len(negative), (k + 1) // 2))
    dropped_positive = _smallest(values, positive, from_positive)
    dropped_negative = _smallest(-values, negative, k - from_positive)
    return np.concatenate([dropped_positive, dropped_negative])


def random_grow(mask, k, rng):
    """k positions drawn uniformly among the inactive positions of `mask`."""
    inactive = np.flatnonzero(~mask)
    return rng.choice(inactive, size=k, replace=False)


def score_grow(scores, mask, k):
    """The k inactive positions with the largest |score|."""
    inactive = np.flatnonzero(~mask)
    return _smallest(-np.abs(scores), inactive, k)


DROP_RULES = {"magnitude": magnitude_drop, "set": set_drop}


def drop_and_grow(values, mask, rate, drop="magnitude", grow="random", scores=None, rng=None):
    """One topology update of one matrix or gate block.

    Args:
        values: weights, any shape.
        mask: boolean array of the same shape (True = active).
        rate: drop rate; `ceil(rate * active)` weights are dropped and as many grown.
        drop: "magnitude" or "set".
        grow: "random" or "score" (then `scores` holds momentum or gradient).
        scores: array like `values`, for score growth.
        rng: `np.random.Generator`, for random growth.

    Returns:
        `(new_mask, dropped, grown)`: the boolean mask and the flat positions dropped
        and grown (a position may be in both).
    """
    flat_values = np.asarray(values).reshape(-1)
    flat_mask = np.asarray(mask, dtype=bool).reshape(-1)
    k = drop_count(int(flat_mask.sum()), rate)
    dropped = DROP_RULES[drop](flat_values, flat_mask, k)
    after_drop = flat_mask.copy()
    after_drop[dropped] = False
    if grow == "random":
        grown = random_grow(after_drop, k, rng)
    else:
        grown = score_grow(np.asarray(scores).reshape(-1), after_drop, k)
    new_mask = after_drop
    new_mask[grown] = True
    return new_mask.reshape(np.shape(mask)), dropped, grown

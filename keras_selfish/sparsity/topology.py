"""Exact drop-and-grow rules on one mask (numpy), the core of a topology update.

A rule is a small object registered by name: a `DropRule` scores every weight
and drops the k active ones of lowest score, a `GrowRule` picks k free positions
(at random, or by largest |score|; the score rules differ only in where their
score comes from). All rules keep the active count exact: growth re-activates
exactly as many positions as the drop removed. Ties are broken deterministically
by flat position (lower first). The rules work on flat positions and run in time
linear in the matrix size (partitions, no sorts).

* drop `magnitude` (`MagnitudeDrop`): the k active weights with the smallest |w|.
* drop `set` (`SETDrop`, SET): half the k from the smallest positive weights, half
  from the largest negative ones (both closest to zero); if one sign runs short,
  the other supplies the rest.
* grow `random` (`RandomGrowth`): k positions drawn uniformly among the inactive
  ones (positions dropped in this very update may be drawn again, as in the
  reference code).
* grow by score (`ScoreGrowth`; `momentum`, SNFS: the optimizer's momentum;
  `gradient`, RigL: the dense gradient on one batch): the k inactive positions
  with the largest |score|.

With block masks (`update_matrix(..., block_size=b, block_axis=a)`,
`ks.sparsity.blocks`; blocks along a kernel's inputs or a table's features) the
same rules run on whole blocks: every score is summed over each block (L1 norm of
the weights for the magnitude), and counts and drop rates are in blocks.

Non-finite input is refused: NaN has no order, so a rule given NaN weights (or
NaN scores) would drop or grow fewer than k and the count would change. The drop
rules and score growth raise `NonFiniteValues` when an active weight (a candidate
score) is NaN or infinite, instead of returning a wrong-sized update.
"""

import math

import numpy as np

from keras_selfish.keras_private import flatten_layers
from keras_selfish.sparsity.blocks import Blocks
from keras_selfish.sparsity.rewire import momentum_slot
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


class DropRule:
    """Which active weights a topology update drops: the k of lowest drop score.

    A rule is a score per weight (`scores`) and a choice among the active ones
    (`select`, by default the k smallest scores, ties to the lower position).
    """

    name = None

    def scores(self, values):
        """Drop scores of weights `values` (any shape; larger survives)."""
        raise NotImplementedError

    def select(self, scores, k):
        """Indices into the 1-D drop scores `scores` of the active weights of the k to drop.

        Raises:
            NonFiniteValues: a score is NaN or infinite.
        """
        check_finite(scores, "active weights")
        return _smallest(scores, k)


class MagnitudeDrop(DropRule):
    """The k active weights of smallest |w|."""

    name = "magnitude"

    def scores(self, values):
        return np.abs(values)


class SETDrop(DropRule):
    """SET: about half the k from the smallest positive, half from the largest negative weights.

    The score is the signed weight; both halves are the weights closest to zero.
    """

    name = "set"

    def scores(self, values):
        return values

    def select(self, scores, k):
        check_finite(scores, "active weights")
        positive = np.flatnonzero(scores > 0)
        negative = np.flatnonzero(scores <= 0)
        from_positive = min(len(positive), max(k - len(negative), (k + 1) // 2))
        dropped_positive = positive[_smallest(scores[positive], from_positive)]
        dropped_negative = negative[_smallest(-scores[negative], k - from_positive)]
        return np.concatenate([dropped_positive, dropped_negative])


class GrowRule:
    """Where a topology update grows: k of the free positions.

    Random growth needs no score; score growth takes the free positions of largest
    |score|, and its subclasses differ only in where the score comes from (`raw_scores`).
    A rule may also check the model it will run on (`check_model`).
    """

    name = None

    def check_arguments(self, data):
        """Raise if the callback's arguments cannot feed this rule."""

    def check_model(self, update):
        """Raise if `update` (a `DropAndGrow` at train begin) cannot run this rule."""

    def raw_scores(self, update):
        """What the rule scores, for every weight of `update.weights_` (a list of
        arrays, e.g. the momentum), or None."""
        return None

    def scores(self, raw):
        """Growth scores of the weights from their `raw_scores` (any shape); larger grows first."""
        return None if raw is None else np.abs(raw)

    def select(self, taken, k, rng, scores):
        """k free positions (not `taken`, a flat boolean map) to grow.

        Args:
            taken: True at the surviving positions; may be updated in place.
            k: how many to grow.
            rng: `np.random.Generator`.
            scores: flat growth scores (from `scores`), or None.
        """
        raise NotImplementedError


class RandomGrowth(GrowRule):
    """k positions drawn uniformly among the free ones."""

    name = "random"

    def scores(self, raw):
        return None

    def select(self, taken, k, rng, scores):
        return random_grow(taken.size, None, k, rng, taken=taken)


class ScoreGrowth(GrowRule):
    """The k free positions of largest |score| (ties: lower position), scores given."""

    name = "score"

    def raw_scores(self, update):
        raise NotImplementedError(f"{type(self).__name__} scores nothing itself: a subclass says what (e.g. MomentumGrowth).")

    def select(self, taken, k, rng, scores):
        candidates = np.flatnonzero(~taken)
        keys = -scores.reshape(-1)[candidates]
        check_finite(keys, "growth scores")
        return candidates[_smallest(keys, k)]


class MomentumGrowth(ScoreGrowth):
    """SNFS: the optimizer's momentum (first moment) is the score."""

    name = "momentum"

    def check_model(self, update):
        optimizer = update.model.optimizer
        if not optimizer.built and all(layer.built for layer in flatten_layers(update.model)):
            # Keras builds it in the first train step, after on_train_begin, and
            # the momentum slots must exist to be checked (Keras does not build twice).
            optimizer.build(update.model.trainable_variables)
        for mw in update.weights_:
            momentum_slot(optimizer, mw.variable)

    def raw_scores(self, update):
        return [momentum_slot(update.model.optimizer, mw.variable).numpy() for mw in update.weights_]


class GradientGrowth(ScoreGrowth):
    """RigL: the dense gradient dL/dW on one batch is the score."""

    name = "gradient"

    def check_arguments(self, data):
        if data is None:
            raise ValueError(
                "grow='gradient' (RigL) needs batches to take the gradient on: pass "
                "data=<a tf.data.Dataset or iterable of (x, y) batches>, e.g. the training dataset."
            )

    def check_model(self, update):
        if not getattr(update.model, "compiled", False):
            raise ValueError("grow='gradient' needs a model compiled with a loss (model.compile(optimizer, loss)).")

    def raw_scores(self, update):
        return update._dense_gradients()


MAGNITUDE = MagnitudeDrop()
RANDOM = RandomGrowth()
SCORE = ScoreGrowth()
DROP_RULES = {rule.name: rule for rule in (MAGNITUDE, SETDrop())}
GROW_RULES = {rule.name: rule for rule in (RANDOM, MomentumGrowth(), GradientGrowth())}


def _rule(kind, rule, registry, base):
    if isinstance(rule, base):
        return rule
    if rule not in registry:
        raise ValueError(f"Unknown {kind} rule {rule!r}; use one of {list(registry)}.")
    return registry[rule]


def drop_rule(rule):
    """The `DropRule` named `rule` ("magnitude", "set"), or `rule` itself if it is one."""
    return _rule("drop", rule, DROP_RULES, DropRule)


def grow_rule(rule):
    """The `GrowRule` named `rule` ("random", "momentum", "gradient"), or `rule` itself if it is one."""
    return _rule("grow", rule, GROW_RULES, GrowRule)


def _given_scores_or(rule):
    """`grow_rule(rule)`, where "score" also names growth on scores the caller passes."""
    return SCORE if rule == SCORE.name else grow_rule(rule)


def magnitude_drop(values, active, k):
    """The k active weights with the smallest |w| (`MagnitudeDrop`).

    Args:
        values: flat weights.
        active: ascending flat positions of the active weights.
        k: how many to drop.

    Returns:
        indices into `active` of the dropped weights.

    Raises:
        NonFiniteValues: an active weight is NaN or infinite.
    """
    return MAGNITUDE.select(MAGNITUDE.scores(values[active]), k)


def set_drop(values, active, k):
    """SET drop (`SETDrop`). Arguments and result as in `magnitude_drop`."""
    return DROP_RULES["set"].select(values[active], k)


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
    """The k positions not in `survivors` with the largest |score|, ties by position (`ScoreGrowth`).

    Raises:
        NonFiniteValues: a score at a position not in `survivors` is NaN or infinite.
    """
    taken = np.zeros(scores.size, dtype=bool)
    taken[survivors] = True
    return SCORE.select(taken, k, None, SCORE.scores(scores).reshape(-1))


def drop_and_grow(values, mask, rate, drop="magnitude", grow="random", scores=None, rng=None):
    """One topology update of one matrix or gate block.

    Args:
        values: weights, any shape.
        mask: array of the same shape, nonzero = active.
        rate: drop rate; `ceil(rate * active)` weights are dropped and as many grown.
        drop: a `DropRule` or its name ("magnitude", "set").
        grow: a `GrowRule` or its name ("random", or "score": `scores` holds
            momentum or gradient).
        scores: array like `values`, for score growth.
        rng: `np.random.Generator`, for random growth.

    Returns:
        `(dropped, grown)`: flat positions dropped and grown (a position may be in
        both: dropped, then drawn again).

    Raises:
        NonFiniteValues: an active weight or a candidate score is NaN or infinite.
    """
    drop, grow = drop_rule(drop), _given_scores_or(grow)
    return _drop_and_grow(drop.scores(np.asarray(values)), mask, rate, drop, grow, grow.scores(scores), rng)


def _drop_and_grow(drop_scores, mask, rate, drop, grow, grow_scores, rng):
    """`drop_and_grow` on drop and growth scores (the rules' `scores`)."""
    flat_scores = drop_scores.reshape(-1)
    taken = np.asarray(mask).reshape(-1) != 0
    active = np.flatnonzero(taken)
    k = drop_count(len(active), rate)
    dropped = active[drop.select(flat_scores[active], k)]
    taken[dropped] = False
    grown = grow.select(taken, k, rng, None if grow_scores is None else grow_scores.reshape(-1))
    return dropped, grown


def _gate_positions(shape, gate_sections, gate_axis):
    """Flat positions of the matrix, one array per gate block."""
    positions = np.arange(int(np.prod(shape))).reshape(shape)
    return [b.reshape(-1) for b in np.split(positions, gate_sections, axis=gate_axis)]


def update_matrix(values, mask, rate, drop="magnitude", grow="random", scores=None, rng=None, gate_sections=1, gate_axis=-1, gate_wise=False, block_size=1, block_axis=0):
    """Drop-and-grow on one gate-concatenated matrix.

    Cross-gate (default): one update over the whole matrix, so its active count is
    fixed but gates compete for it. Gate-wise: each gate block along `gate_axis`
    is updated on its own and keeps its own count.

    With `block_size > 1` the mask is made of whole blocks (`ks.sparsity.blocks`)
    and the update moves whole blocks: the rules run on block scores (the sum of
    the weights' scores over each block), `rate` applies to the active blocks,
    and a gate (along the axis across the blocks) holds whole blocks.

    Args:
        values: weights of the matrix, e.g. `(input_dim, 4 * units)`.
        mask: array of the same shape, nonzero = active.
        rate, drop, grow, scores, rng: as in `drop_and_grow`.
        gate_sections, gate_axis: the gate layout of the matrix (`np.split`
            sections: a gate count, or split indices for unequal gates).
        gate_wise: update every gate block separately.
        block_size: the mask's block size (1: unstructured).
        block_axis: the axis its blocks run along (0: a kernel's inputs, 1: a
            table's features).

    Returns:
        `(dropped, grown)`: flat positions in the whole matrix.

    Raises:
        NonFiniteValues: an active weight or a candidate score is NaN or infinite.
    """
    drop, grow = drop_rule(drop), _given_scores_or(grow)
    values, mask = np.asarray(values), np.asarray(mask)
    blocks = Blocks(values.shape, block_size, block_axis)
    gated = gate_wise and gate_sections != 1
    if gated or block_size > 1:
        check_finite(values[mask != 0], "active weights")  # counted in weights, over the whole matrix
    drop_scores = blocks.reduce(drop.scores(values))
    grow_scores = grow.scores(scores)
    grow_scores = None if grow_scores is None else blocks.reduce(grow_scores)
    block_mask = blocks.of_mask(mask)
    if not gated:
        dropped, grown = _drop_and_grow(drop_scores, block_mask, rate, drop, grow, grow_scores, rng)
        return blocks.positions(dropped), blocks.positions(grown)
    dropped, grown = [], []
    for positions in _gate_positions(blocks.grid, gate_sections, gate_axis):
        gate_scores = None if grow_scores is None else grow_scores.reshape(-1)[positions]
        d, g = _drop_and_grow(drop_scores.reshape(-1)[positions], block_mask.reshape(-1)[positions], rate, drop, grow, gate_scores, rng)
        dropped.append(positions[d])
        grown.append(positions[g])
    return blocks.positions(np.concatenate(dropped)), blocks.positions(np.concatenate(grown))


def magnitude_prune(values, mask, keep, block_size=1, block_axis=0):
    """Flat positions of the active weights to prune so that the `keep` of largest |w| stay.

    With `block_size > 1`, `keep` counts blocks (along `block_axis`), ranked by
    their L1 norm, and whole blocks are pruned.

    Raises:
        NonFiniteValues: an active weight is NaN or infinite.
    """
    values, mask = np.asarray(values), np.asarray(mask)
    blocks = Blocks(values.shape, block_size, block_axis)
    if block_size > 1:
        check_finite(values[mask != 0], "active weights")
    active = np.flatnonzero(blocks.of_mask(mask).reshape(-1) != 0)
    scores = blocks.reduce(MAGNITUDE.scores(values)).reshape(-1)[active]
    return blocks.positions(active[MAGNITUDE.select(scores, max(len(active) - keep, 0))])

"""Magnitude drop + uniform random growth of one matrix in compiled passes (numba).

`magnitude_random(values, mask, k, seed, workspace)` makes the update of
`topology.drop_and_grow(drop="magnitude", grow="random")`:

* the k active weights with the smallest |w| are dropped, ties going to the lower
  flat position: exactly the set `topology.magnitude_drop` picks;
* an active weight that is NaN or infinite makes it refuse (`NonFiniteValues`),
  as the numpy rules do: NaN has no order, and the count would change;
* k positions are grown: a uniformly random k-subset of the free positions (the
  inactive ones and those just dropped), chosen by Knuth's selection sampling
  (Algorithm S: each free position in turn is taken with probability
  needed / remaining, decided by an unbiased bounded random integer, Lemire's
  method), so every k-subset is exactly equally likely. Random bits: splitmix64
  from `seed`.

It writes the dense boolean maps the rewiring needs (`survivors`, active before
and after; `new_mask`) into the workspace's buffers instead of building position
lists, in three passes over the matrix (plus a short walk that settles weights
tied with the k-th magnitude, when there are any) that release the GIL (matrices
update in parallel threads) and allocate nothing. With the in-place rewrite of
the variables (`in_place`), one update of a 2 x 1500 LSTM language model (66 M
masked weights) takes 0.26-0.34 s on two cores (`bench/mask_update.py`); the numpy
rules of `topology` took 3 s, mostly from allocating temporaries.

Block masks (`ks.sparsity.blocks`): `BlockWorkspace.update` makes the same update
on whole blocks, as `topology.update_matrix(..., block_size=b)` drops them (the
same float64 L1 norms, summed in the same order): one pass computes the block
norms and the block mask, `magnitude_random` runs on the blocks (b times fewer),
and one pass writes the blocks' maps onto the weights. The kernels run blocks
along axis 0 of 2-D arrays; a table blocked along its features (axis 1) is passed
transposed (`Blocks.view`, no copy), a column-major array that numba compiles on
its own, with the loops in memory order (`_by_rows`) as for a kernel.

The kernels here and in `selection` and `in_place` are compiled once and cached on
disk (numba's `cache=True`: `__pycache__` beside the sources, or `NUMBA_CACHE_DIR`),
which saves about 3 s of every new process's first update. numba checks only the
file of the function it compiles, not the files it calls into: after editing
`selection.py` or `in_place.py`, delete the cache (the tests use a fresh one).
"""

import numba
import numba.extending
import numpy as np

from keras_selfish.sparsity.blocks import Blocks
from keras_selfish.sparsity.in_place import DTYPES
from keras_selfish.sparsity.rewire import Change
from keras_selfish.sparsity.selection import kth_smallest_in_place
from keras_selfish.sparsity.topology import MagnitudeDrop
from keras_selfish.sparsity.topology import NonFiniteValues
from keras_selfish.sparsity.topology import RandomGrowth
from keras_selfish.sparsity.topology import drop_count

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)
_BLOCK = 4096


@numba.njit(nogil=True, inline="always", cache=True)
def _mix(z):
    """splitmix64 output function."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(nogil=True, cache=True)
def _active_magnitudes(values, mask, out):
    """|w| of the active weights into `out`, in position order.

    Returns:
        `(active, non_finite)`: how many weights are active, and how many of
        those are NaN or infinite.
    """
    count = non_finite = 0
    for p in range(mask.size):
        magnitude = abs(values[p])
        out[count] = magnitude
        active = mask[p] != 0
        count += active
        non_finite += active & (not magnitude < np.inf)
    return count, non_finite


@numba.njit(nogil=True, cache=True)
def _survivors(values, mask, threshold, survivors):
    """Active weights above `threshold` survive."""
    for p in range(mask.size):
        survivors[p] = (mask[p] != 0) & (not abs(values[p]) <= threshold)


@numba.njit(nogil=True, cache=True)
def _settle_ties(values, mask, threshold, count, forward, survive, survivors):
    """Sets `survivors` to `survive` at the first (`forward`) or last `count`
    active weights of magnitude `threshold`.

    Blocks of positions are searched for ties branch-free (vectorised), from the
    start or the end of the matrix, and the walk stops at the `count`-th tie.
    """
    blocks = (mask.size + _BLOCK - 1) // _BLOCK
    for b in range(blocks):
        start = (b if forward else blocks - 1 - b) * _BLOCK
        stop = min(start + _BLOCK, mask.size)
        ties = 0
        for p in range(start, stop):
            ties += (mask[p] != 0) & (abs(values[p]) == threshold)
        if ties == 0:
            continue
        for i in range(stop - start):
            p = start + i if forward else stop - 1 - i
            if mask[p] != 0 and abs(values[p]) == threshold:
                survivors[p] = survive
                count -= 1
                if count == 0:
                    return


@numba.njit(nogil=True, inline="always", cache=True)
def _below(bits32, bound, state):
    """`(r, state)`: r uniform in [0, bound) from 32 random bits (Lemire; rejection keeps it exact)."""
    product = bits32 * bound
    if (product & _LOW32) < bound:  # rare: reject the biased low range
        floor = (_TWO32 - bound) % bound
        while (product & _LOW32) < floor:
            state += _GOLDEN
            product = (_mix(state) >> np.uint64(32)) * bound
    return product >> np.uint64(32), state


@numba.njit(nogil=True, cache=True)
def _grow(survivors, grow, free, seed, new_mask):
    """`new_mask` = survivors plus `grow` of the `free` non-survivors (Algorithm S)."""
    state = np.uint64(seed)
    need = np.uint64(grow)
    remaining = np.uint64(free)
    spare = np.uint64(0)
    for p in range(survivors.size):
        # One bounded draw in [0, remaining) per position (unused at survivors);
        # each 64-bit output gives the random bits of two draws.
        if p & 1:
            bits = spare
        else:
            state += _GOLDEN
            z = _mix(state)
            bits, spare = z >> np.uint64(32), z & _LOW32
        r, state = _below(bits, remaining, state)
        is_free = np.uint64(1) - np.uint64(survivors[p])
        take = is_free & np.uint64(r < need)
        need -= take
        remaining -= is_free
        new_mask[p] = survivors[p] | (take != 0)


def _by_rows(matrix):
    """Whether the 2-D `matrix` is laid out row by row, so that the loops over
    its rows go outside (a compile-time constant in the kernels: numba compiles
    row-major and column-major arrays apart; this is its Python twin)."""
    return matrix.flags.c_contiguous or not matrix.flags.f_contiguous


@numba.extending.overload(_by_rows, inline="always")
def _by_rows_compiled(matrix):
    by_rows = matrix.layout != "F"
    return lambda matrix: by_rows


@numba.njit(nogil=True, cache=True)
def _block_magnitudes(values, mask, size, scores, block_mask):
    """L1 norms of the 1 x `size` blocks along axis 0 of the `(rows, cols)`
    matrix `values` (float64, summed in row order, a partial last block scaled by
    `size / its rows`) into `scores` `(ceil(rows / size), cols)`, and the first
    row of every block of `mask` into `block_mask` (shaped like `scores`). The
    arrays are `Blocks.view`s: a table blocked along its features comes transposed.

    Returns:
        `(active, non_finite)`: how many weights are active, and how many of
        those are NaN or infinite.
    """
    rows, cols = values.shape
    active = non_finite = 0
    for i in range(scores.shape[0]):
        for c in range(cols):
            scores[i, c] = 0.0
    by_rows = _by_rows(values)
    outer, inner = (rows, cols) if by_rows else (cols, rows)
    for a in range(outer):
        for b in range(inner):
            r, c = (a, b) if by_rows else (b, a)
            i = r // size
            first = r % size == 0
            magnitude = abs(values[r, c])
            is_active = mask[r, c] != 0
            active += is_active
            non_finite += is_active & (not magnitude < np.inf)
            scores[i, c] += magnitude
            if first:
                block_mask[i, c] = mask[r, c]
    partial = rows % size
    if partial:
        scale = size / partial
        last = scores.shape[0] - 1
        for c in range(cols):
            scores[last, c] *= scale
    return active, non_finite


@numba.njit(nogil=True, cache=True)
def _expand_blocks(block_mask, block_survivors, block_new_mask, size, survivors, new_mask):
    """Block maps `(ceil(rows / size), cols)` onto the weights' `(rows, cols)`
    (views, as in `_block_magnitudes`); returns `(dropped, grown)` counted in weights."""
    rows, cols = survivors.shape
    dropped = grown = 0
    by_rows = _by_rows(survivors)
    outer, inner = (rows, cols) if by_rows else (cols, rows)
    for a in range(outer):
        for b in range(inner):
            r, c = (a, b) if by_rows else (b, a)
            i = r // size
            survivors[r, c] = block_survivors[i, c]
            new_mask[r, c] = block_new_mask[i, c]
            dropped += (block_mask[i, c] != 0) & (not block_survivors[i, c])
            grown += block_new_mask[i, c] & (not block_survivors[i, c])
    return dropped, grown


class Workspace:
    """Buffers for the updates of one matrix, allocated and touched once.

    `survivors` and `new_mask` (boolean) and `magnitudes` (the weight's dtype),
    each one element per weight, overwritten by every update. They are written
    when created, because first touches of fresh memory (page faults) cost about
    1 ms per MB on the machines this was measured on: creating the workspaces
    before training keeps that out of the updates.
    """

    def __init__(self, size, dtype):
        self.survivors = np.ones(size, dtype=bool)
        self.new_mask = np.ones(size, dtype=bool)
        self.magnitudes = np.ones(size, dtype=dtype)

    def fits(self, size, dtype, block_size=1, block_axis=0):
        return block_size == 1 and self.magnitudes.size == size and self.magnitudes.dtype == np.dtype(dtype)

    def update(self, values, mask, rate, seed):
        """The `Change` of `magnitude_random` on the flat `values` and `mask`."""
        survivors, new_mask, k = magnitude_random(values, mask, rate, seed, self)
        return Change(survivors, new_mask, k, k)


class BlockWorkspace:
    """Buffers for the block updates of one matrix (`Blocks` along `block_axis`):
    the weights' boolean maps, the block scores and block mask (float64, flat in
    block order) and a `Workspace` of the blocks.
    """

    def __init__(self, shape, block_size, dtype, block_axis=0):
        self.blocks = Blocks(shape, block_size, block_axis)
        self.dtype = np.dtype(dtype)
        self.survivors = np.ones(int(np.prod(shape)), dtype=bool)
        self.new_mask = np.ones(self.survivors.size, dtype=bool)
        self.scores = np.ones(self.blocks.count, dtype=np.float64)
        self.block_mask = np.ones(self.blocks.count, dtype=np.float64)
        self.block_workspace = Workspace(self.blocks.count, np.float64)

    def fits(self, size, dtype, block_size=1, block_axis=0):
        blocks = self.blocks
        return (block_size, block_axis) == (blocks.size, blocks.axis) and self.survivors.size == size and self.dtype == np.dtype(dtype)

    def update(self, values, mask, rate, seed):
        """Drop `ceil(rate * active blocks)` blocks of smallest L1 norm, grow as many
        uniformly among the free blocks (as `magnitude_random` on the blocks).

        Raises:
            NonFiniteValues: an active weight is NaN or infinite.
        """
        blocks = self.blocks
        scores, block_mask = blocks.grid_view(self.scores), blocks.grid_view(self.block_mask)
        active, non_finite = _block_magnitudes(blocks.view(values), blocks.view(mask), blocks.size, scores, block_mask)
        if non_finite:
            raise NonFiniteValues(non_finite, active, "active weights")
        block_survivors, block_new_mask, _ = magnitude_random(self.scores, self.block_mask, rate, seed, self.block_workspace)
        dropped, grown = _expand_blocks(
            block_mask, blocks.grid_view(block_survivors), blocks.grid_view(block_new_mask), blocks.size, blocks.view(self.survivors), blocks.view(self.new_mask)
        )
        return Change(self.survivors, self.new_mask, dropped, grown)


def workspace(shape, dtype, block_size=1, block_axis=0):
    """A `Workspace` (or, for blocks along `block_axis`, a `BlockWorkspace`) for a matrix, kernels compiled."""
    warm_up(dtype, block_size, block_axis)
    if block_size == 1:
        return Workspace(int(np.prod(shape)), dtype)
    return BlockWorkspace(shape, block_size, dtype, block_axis)


def warm_up(dtype, block_size=1, block_axis=0):
    """Compile the kernels for weights of `dtype` (once per process, about a second;
    the block kernels too when `block_size > 1`, for blocks along `block_axis`:
    numba compiles the transposed views of axis 1 separately)."""
    values = np.repeat(np.arange(1, 5, dtype=dtype), 4)
    values.flags.writeable = False  # as the variables' values are read
    magnitude_random(values, values, 0.375, 0, Workspace(values.size, dtype))  # with ties
    if block_size > 1:
        matrix = np.resize(values, 20)
        matrix.flags.writeable = False
        BlockWorkspace((5, 4) if block_axis == 0 else (4, 5), 2, dtype, block_axis).update(matrix, matrix, 0.375, 0)  # a partial block


def handles(drop, grow, gate_wise):
    """Whether these kernels make the updates of rules `drop`, `grow` (the Selfish-RNN rule, cross-gate)."""
    return type(drop) is MagnitudeDrop and type(grow) is RandomGrowth and not gate_wise


def supports(size, dtype):
    """Whether the kernels handle a matrix of `size` weights of `dtype`.

    The bounded draws are 32-bit, and numba compiles float32 and float64 (not
    16-bit floats, which take the numpy rule).
    """
    return size < 2**32 and np.dtype(dtype) in DTYPES


def magnitude_random(values, mask, rate, seed, workspace):
    """Drop `ceil(rate * active)` weights by magnitude and grow as many at random.

    Args:
        values, mask: flat weights and mask (nonzero = active), same size.
        rate: drop rate.
        seed: integer in [0, 2**64), the random stream of this update.
        workspace: a `Workspace` of this size and the values' dtype.

    Returns:
        `(survivors, new_mask, k)`: the workspace's boolean maps and the number of
        weights dropped (= grown).

    Raises:
        NonFiniteValues: an active weight is NaN or infinite (as the numpy rule).
    """
    magnitudes = workspace.magnitudes
    active, non_finite = _active_magnitudes(values, mask, magnitudes)
    if non_finite:
        raise NonFiniteValues(non_finite, active, "active weights")
    k = drop_count(active, rate)
    threshold, below, equal = kth_smallest_in_place(magnitudes[:active], k)
    # The first `k - below` weights tied at the threshold are dropped, the others
    # survive. Ties (rare: a few weights of equal |w|) are first all given the
    # majority outcome, then the minority is settled from the nearer end.
    tie_drops = k - below
    tie_keeps = equal - tie_drops
    if tie_keeps >= tie_drops:
        _survivors(values, mask, np.nextafter(threshold, threshold.dtype.type(-np.inf)), workspace.survivors)
        if tie_drops:
            _settle_ties(values, mask, threshold, tie_drops, True, False, workspace.survivors)
    else:
        _survivors(values, mask, threshold, workspace.survivors)
        if tie_keeps:
            _settle_ties(values, mask, threshold, tie_keeps, False, True, workspace.survivors)
    _grow(workspace.survivors, k, mask.size - (active - k), np.uint64(seed), workspace.new_mask)
    return workspace.survivors, workspace.new_mask, k

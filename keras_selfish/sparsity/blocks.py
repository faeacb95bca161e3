"""Block-structured masks: whole 1 x b blocks along one axis of a matrix.

TFLite's FULLY_CONNECTED kernel keeps block-sparse weights sparse at run time (no
DENSIFY op): its weights are `(out, in)` and its blocks, 1 x 4 or 1 x 16, run
along `in`. In the Keras kernel layout `(in, out)` such a block is `b`
consecutive rows (inputs) of one column (output unit): blocks along axis 0. An
embedding table `(vocab, features)` takes its blocks along axis 1, `b`
consecutive features of one row: tied, it is itself the softmax's
FULLY_CONNECTED weight `(out=vocab, in=features)`. A matrix of `n` entries along
the block axis has `ceil(n / b)` blocks per line across it; when `n` is not a
multiple of `b`, the last block of every line is partial (`n % b` weights) and,
like the others, active or not as a whole. Gate blocks split the other axis, so
a block never straddles two gates.

Blocks along axis 1 are blocks along axis 0 of the transposed matrix: every
method works on `view` (the matrix with its block axis first, a transposed numpy
view for axis 1, no copy) and numbers the blocks in the matrix's own orientation.

Every drop and grow rule runs on blocks through one reduction: its per-weight
score (|w|, |momentum|, |gradient|, the signed weight for SET) is summed over each
block, in float64, so the magnitude of a block is its L1 norm. L1 rather than L2:
it is what a block adds to the outputs' size for inputs of similar size, and L2
would keep a block for one large weight among near-zero ones, which cost as much
once the block is stored. A partial block's sum is scaled by `b / (its weights)`
(its mean, as a full block's), so it competes on equal terms. With `b = 1` the
reduction is the identity and every rule is the unstructured one.
"""

import math

import numpy as np


class Blocks:
    """The 1 x `size` blocks along `axis` of a 2-D matrix of shape `shape`.

    With the matrix viewed block axis first (`view`, shape `(rows, cols)`: the
    matrix for axis 0, its transpose for axis 1), block `(i, c)` holds rows
    `i * size` to `min((i + 1) * size, rows) - 1` of column `c`. Blocks are
    numbered row-major over the block grid `grid`, in the matrix's orientation:
    `(ceil(rows / size), cols)` for axis 0, `(cols, ceil(rows / size))` for axis 1
    (a table's block `(v, j)`: features `j * size` onwards of row `v`).
    """

    def __init__(self, shape, size, axis=0):
        self.shape, self.size, self.axis = tuple(shape), int(size), int(axis)
        if self.size > 1 and (len(self.shape) != 2 or self.axis not in (0, 1)):
            raise ValueError(f"Blocks need a 2-D matrix and block axis 0 or 1, got shape {self.shape}, axis {axis}.")
        rows, cols = (self.shape[0], int(np.prod(self.shape[1:]))) if self.shape else (1, 1)
        self.matrix_shape = (rows, cols)
        if self.axis == 1:
            rows, cols = cols, rows
        self.rows, self.cols = rows, cols  # of the view: along the blocks, across them
        along = math.ceil(rows / self.size)
        self.grid = self.shape if self.size == 1 else (along, cols) if self.axis == 0 else (cols, along)
        self.partial = rows % self.size  # rows of the last block of a column, 0 if full

    def _orient(self, array):
        """A 2-D array in the view's orientation in the matrix's, or back (a transpose for axis 1)."""
        return array.T if self.axis == 1 else array

    def view(self, array):
        """`array` (shaped like the matrix, or flat) as `(rows, cols)`, block axis first; no copy."""
        return self._orient(np.asarray(array).reshape(self.matrix_shape))

    def grid_view(self, block_array):
        """`block_array` (shaped like `grid`, or flat) as `(ceil(rows / size), cols)`, like `view`."""
        return self._orient(np.asarray(block_array).reshape(self.grid))

    @property
    def count(self):
        """Number of blocks."""
        return int(np.prod(self.grid))

    def reduce(self, scores):
        """Block scores `(grid)`: the float64 sum of `scores` (shaped like the
        matrix) over every block, a partial block's scaled by `size / rows`.
        The identity for size 1."""
        if self.size == 1:
            return scores
        scores = self.view(scores)
        full = self.rows // self.size
        out = np.zeros(self.grid, dtype=np.float64)
        view = self.grid_view(out)
        for i in range(self.size):  # summed in row order, as the compiled kernel does
            view[:full] += scores[i : full * self.size : self.size]
        if self.partial:
            for r in range(full * self.size, self.rows):
                view[full] += scores[r]
            view[full] *= self.size / self.partial
        return out

    def of_mask(self, mask):
        """The block mask `(grid)`: the first weight of every block (blocks are whole)."""
        if self.size == 1:
            return np.asarray(mask)
        return self._orient(self.view(mask)[:: self.size])

    def expand(self, block_array):
        """An array shaped like the matrix: every block's value on all its weights."""
        block_array = np.asarray(block_array).reshape(self.grid)
        if self.size == 1:
            return block_array
        weights = np.repeat(self.grid_view(block_array), self.size, axis=0)[: self.rows]
        return np.ascontiguousarray(self._orient(weights)).reshape(self.shape)

    def positions(self, blocks):
        """Flat positions (in the matrix) of the weights of flat block indices `blocks`."""
        if self.size == 1:
            return blocks
        major, minor = np.divmod(np.asarray(blocks, dtype=np.int64), self.grid[1])
        block_rows, cols = (major, minor) if self.axis == 0 else (minor, major)
        rows = block_rows[:, None] * self.size + np.arange(self.size)
        row_stride, col_stride = (self.cols, 1) if self.axis == 0 else (1, self.rows)
        flat = rows * row_stride + cols[:, None] * col_stride
        return flat[rows < self.rows]

    def is_whole(self, mask):
        """Whether every block of `mask` is all active or all inactive."""
        active = self.view(mask) != 0
        return self.size == 1 or np.array_equal(active, np.repeat(active[:: self.size], self.size, axis=0)[: self.rows])

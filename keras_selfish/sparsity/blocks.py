"""Block-structured masks: whole 1 x b blocks along the input axis of a matrix.

TFLite's FULLY_CONNECTED kernel keeps block-sparse weights sparse at run time (no
DENSIFY op): its weights are `(out, in)` and its blocks, 1 x 4 or 1 x 16, run
along `in`. In the Keras kernel layout `(in, out)` such a block is `b`
consecutive rows (inputs) of one column (output unit). A matrix of `rows` inputs
has `ceil(rows / b)` blocks per column; when `rows` is not a multiple of `b`, the
last block of every column is partial (`rows % b` weights) and, like the others,
active or not as a whole. Gate blocks split the columns, so a block never
straddles two gates.

Every drop and grow rule runs on blocks through one reduction: its per-weight
score (|w|, |momentum|, |gradient|, the signed weight for SET) is summed over each
block, in float64, so the magnitude of a block is its L1 norm. L1 rather than L2:
it is what a block adds to the outputs' size for inputs of similar size, and L2
would keep a block for one large weight among near-zero ones, which cost as much
once the block is stored. A partial block's sum is scaled by `b / (its rows)` (its
mean, as a full block's), so it competes on equal terms. With `b = 1` the
reduction is the identity and every rule is the unstructured one.
"""

import math

import numpy as np


class Blocks:
    """The 1 x `size` blocks of a 2-D matrix of shape `shape = (rows, cols)`.

    Blocks are numbered row-major over the block grid `(ceil(rows / size), cols)`:
    block `(i, c)` holds rows `i * size` to `min((i + 1) * size, rows) - 1` of
    column `c`.
    """

    def __init__(self, shape, size):
        if size > 1 and len(shape) != 2:
            raise ValueError(f"Blocks need a 2-D (input, output) matrix, got shape {tuple(shape)}.")
        self.shape, self.size = tuple(shape), int(size)
        rows, cols = (self.shape[0], int(np.prod(self.shape[1:]))) if self.shape else (1, 1)
        self.rows, self.cols = rows, cols
        self.grid = self.shape if self.size == 1 else (math.ceil(rows / self.size), cols)
        self.partial = rows % self.size  # rows of the last block of a column, 0 if full

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
        scores = np.asarray(scores).reshape(self.rows, self.cols)
        full = self.rows // self.size
        out = np.zeros(self.grid, dtype=np.float64)
        for i in range(self.size):  # summed in row order, as the compiled kernel does
            out[:full] += scores[i : full * self.size : self.size]
        if self.partial:
            for r in range(full * self.size, self.rows):
                out[full] += scores[r]
            out[full] *= self.size / self.partial
        return out

    def of_mask(self, mask):
        """The block mask `(grid)`: the first row of every block (blocks are whole)."""
        if self.size == 1:
            return np.asarray(mask)
        return np.asarray(mask).reshape(self.rows, self.cols)[:: self.size]

    def expand(self, block_array):
        """An array shaped like the matrix: every block's value on all its weights."""
        block_array = np.asarray(block_array).reshape(self.grid)
        if self.size == 1:
            return block_array
        return np.repeat(block_array, self.size, axis=0)[: self.rows].reshape(self.shape)

    def positions(self, blocks):
        """Flat positions (in the matrix) of the weights of flat block indices `blocks`."""
        if self.size == 1:
            return blocks
        blocks = np.asarray(blocks, dtype=np.int64)
        rows = (blocks // self.cols)[:, None] * self.size + np.arange(self.size)
        flat = rows * self.cols + (blocks % self.cols)[:, None]
        return flat[rows < self.rows]

    def is_whole(self, mask):
        """Whether every block of `mask` is all active or all inactive."""
        active = np.asarray(mask).reshape(self.rows, self.cols) != 0
        return self.size == 1 or np.array_equal(active, self.expand(active[:: self.size]))


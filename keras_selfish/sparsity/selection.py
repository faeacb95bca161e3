"""The k-th smallest of many keys in linear time, in place (numba + numpy partition).

Grown weights start at exactly 0, so the smallest magnitude is often shared by very
many weights, and `np.partition` is many times slower on such duplicates: the
minimum is counted and set aside first, and only the larger keys are partitioned.
"""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _drop_value(keys, value):
    """Moves the keys other than `value` to the front (in place); returns how many there are."""
    count = 0
    for key in keys:
        keys[count] = key
        count += key != value
    return count


@numba.njit(nogil=True, cache=True)
def _count_below_and_equal(keys, threshold):
    below = equal = 0
    for key in keys:
        below += key < threshold
        equal += key == threshold
    return below, equal


def kth_smallest_in_place(keys, k):
    """`(t, below, equal)`: the k-th smallest key (0 <= k <= len(keys)) and how
    many keys are below / equal to it; t = -inf when k = 0.

    Reorders `keys`; allocates nothing.
    """
    if k == 0:
        return keys.dtype.type(-np.inf), 0, 0
    low = keys.min()
    rest = _drop_value(keys, low)
    at_low = len(keys) - rest
    if at_low >= k:
        return low, 0, at_low
    larger = keys[:rest]
    larger.partition(k - at_low - 1)
    threshold = larger[k - at_low - 1]
    below, equal = _count_below_and_equal(larger, threshold)
    return threshold, at_low + below, equal

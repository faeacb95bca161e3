"""The compiled Selfish-RNN update: same drop set as the numpy rule, exact counts, uniform growth."""

import collections
import math

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from keras_selfish.sparsity import fused_update
from keras_selfish.sparsity import topology


def _update(values, mask, rate, seed):
    workspace = fused_update.Workspace(mask.size, values.dtype)
    survivors, new_mask, k = fused_update.magnitude_random(values, mask, rate, seed, workspace)
    return survivors.copy(), new_mask.copy(), k


def _check_against_numpy_rule(values, mask, rate, seed):
    survivors, new_mask, k = _update(values, mask, rate, seed)
    active = np.flatnonzero(mask)
    assert k == topology.drop_count(len(active), rate)
    dropped = active[topology.magnitude_drop(values, active, k)]
    expected = mask != 0
    expected[dropped] = False
    np.testing.assert_array_equal(survivors, expected)
    grown = new_mask & ~survivors
    assert grown.sum() == k and new_mask.sum() == len(active)
    assert np.all(new_mask[survivors])


@hypothesis.given(
    size=st.integers(1, 300),
    density=st.floats(0.0, 1.0),
    rate=st.floats(0.001, 0.999),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**63),
)
@hypothesis.settings(deadline=None, max_examples=300)
def test_drop_set_and_counts_equal_the_numpy_rule(size, density, rate, levels, seed):
    rng = np.random.default_rng(seed % 2**32)
    mask = (rng.random(size) < density).astype("float32")
    # Few magnitude levels, signs and exact zeros: many ties.
    values = (rng.integers(-levels, levels + 1, size) * mask).astype("float32")
    _check_against_numpy_rule(values, mask, rate, seed)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("ties", [2, 3, 50, 3000])
def test_ties_spread_over_many_blocks(rate, ties):
    # Distinct magnitudes except `ties` weights placed at the k-th magnitude,
    # scattered over a matrix of several blocks: the tie walk (forward or
    # backward, stopping early) keeps exactly the later ones.
    rng = np.random.default_rng(ties)
    size = 7 * fused_update._BLOCK + 123
    mask = (rng.random(size) < 0.4).astype("float32")
    active = np.flatnonzero(mask)
    values = np.zeros(size, "float32")
    values[active] = rng.permutation(len(active)).astype("float32") + 1
    k = topology.drop_count(len(active), rate)
    tied = rng.choice(active, ties, replace=False)
    values[tied] = k * rng.choice([-1, 1], ties)
    _check_against_numpy_rule(values, mask, rate, ties)


def test_growth_is_uniform_over_free_positions():
    # 2 active weights, drop 1: grow 1 of the 9 free positions (8 inactive + the dropped one).
    mask = np.zeros(10, "float32")
    mask[:2] = 1
    values = np.array([1, 2] + [0] * 8, "float32")
    counts = collections.Counter()
    trials = 18000
    for seed in range(trials):
        survivors, new_mask, _ = _update(values, mask, 0.5, seed)
        counts[int(np.flatnonzero(new_mask & ~survivors)[0])] += 1
    assert sorted(counts) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    expected = trials / 9
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 26.1  # 8 degrees of freedom, p = 0.001


def test_every_subset_of_a_small_case_is_drawn_equally_often():
    # 5 active of 8, drop 3 (the smallest), grow 3 of the 6 free: all 20 subsets.
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], "float32")
    values = np.array([0.1, 0.2, 0.3, 5, 6, 0, 0, 0], "float32")
    counts = collections.Counter()
    trials = 20000
    for seed in range(trials):
        survivors, new_mask, k = _update(values, mask, 0.6, seed)
        assert k == 3 and list(np.flatnonzero(survivors)) == [3, 4]
        counts[tuple(np.flatnonzero(new_mask & ~survivors))] += 1
    assert len(counts) == math.comb(6, 3)
    expected = trials / 20
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 43.8  # 19 degrees of freedom, p = 0.001


def test_same_seed_same_result_and_workspace_reuse():
    rng = np.random.default_rng(0)
    mask = (rng.random(5000) < 0.3).astype("float32")
    values = (rng.normal(size=5000) * mask).astype("float32")
    workspace = fused_update.Workspace(5000, "float32")
    first = [a.copy() for a in fused_update.magnitude_random(values, mask, 0.4, 7, workspace)[:2]]
    fused_update.magnitude_random(values, mask, 0.4, 8, workspace)
    again = fused_update.magnitude_random(values, mask, 0.4, 7, workspace)[:2]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

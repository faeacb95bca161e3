"""Exactness of the drop-and-grow rules (property tests against brute force)."""

import math

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from keras_selfish.sparsity import topology


@st.composite
def matrices(draw):
    rows = draw(st.integers(1, 12))
    cols = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    # Rounded values make ties common, so tie-breaking is exercised.
    values = np.round(rng.normal(size=(rows, cols)), 1)
    mask = rng.random((rows, cols)) < draw(st.floats(0.05, 0.95))
    values = values * mask
    return values, mask, rng


@st.composite
def gated_matrices(draw):
    gates = draw(st.integers(1, 4))
    rows = draw(st.integers(1, 8))
    block = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    shape = (rows, gates * block)
    # Rounded values make ties common, so tie-breaking is exercised.
    values = np.round(rng.normal(size=shape), 1)
    mask = rng.random(shape) < draw(st.floats(0.05, 0.95))
    return values * mask, mask, gates, rng


def block_counts(mask, gates):
    return [int(b.sum()) for b in np.split(mask, gates, axis=-1)]


@hypothesis.given(
    gated_matrices(),
    st.floats(0.001, 0.999),
    st.sampled_from(["magnitude", "set"]),
    st.sampled_from(["random", "score"]),
    st.booleans(),
)
@hypothesis.settings(deadline=None, max_examples=400)
def test_update_keeps_counts_exact_and_grows_only_free_positions(matrix, rate, drop, grow, gate_wise):
    values, mask, gates, rng = matrix
    scores = rng.normal(size=values.shape)
    dropped, grown = topology.update_matrix(values, mask, rate, drop, grow, scores, rng, gate_sections=gates, gate_wise=gate_wise)
    new_mask = mask.reshape(-1).copy()
    new_mask[dropped] = False
    survivors = new_mask.copy()
    new_mask[grown] = True
    new_mask = new_mask.reshape(mask.shape)
    blocks = block_counts(mask, gates) if gate_wise else [int(mask.sum())]
    k = sum(topology.drop_count(a, rate) for a in blocks)
    assert len(dropped) == len(set(dropped)) == k
    assert len(grown) == len(set(grown)) == k
    assert mask.reshape(-1)[dropped].all()
    assert not survivors[grown].any()  # never grows where a weight survived the drop
    assert new_mask.sum() == mask.sum()
    if gate_wise:
        assert block_counts(new_mask, gates) == block_counts(mask, gates)
    if drop == "magnitude" and not gate_wise:
        flat_values, active = values.reshape(-1), np.flatnonzero(mask)
        assert sorted(dropped) == sorted(sorted(active, key=lambda i: (abs(flat_values[i]), i))[:k])


@hypothesis.given(matrices(), st.floats(0.001, 0.999))
@hypothesis.settings(deadline=None, max_examples=300)
def test_magnitude_drop_is_exactly_the_k_smallest_with_deterministic_ties(matrix, rate):
    values, mask, _ = matrix
    flat_values, active = values.reshape(-1), np.flatnonzero(mask)
    k = topology.drop_count(len(active), rate)
    expected = sorted(active, key=lambda i: (abs(flat_values[i]), i))[:k]
    dropped = active[topology.magnitude_drop(flat_values, active, k)]
    assert sorted(dropped) == sorted(expected)


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.8])
def test_magnitude_drop_with_many_exact_zeros(zeros):
    # As after growth: a large share of the active weights is exactly 0.
    rng = np.random.default_rng(1)
    values = rng.normal(size=5000).astype("float32")
    values[rng.random(5000) < zeros] = 0.0
    active = np.arange(0, 5000, 2)
    for k in (1, 700, 1250, 2000, 2500):
        expected = active[np.argsort(np.abs(values[active]), kind="stable")[:k]]
        np.testing.assert_array_equal(np.sort(active[topology.magnitude_drop(values, active, k)]), np.sort(expected))


@hypothesis.given(matrices(), st.floats(0.001, 0.999))
@hypothesis.settings(deadline=None, max_examples=300)
def test_set_drop_takes_the_weights_closest_to_zero_from_each_sign(matrix, rate):
    values, mask, _ = matrix
    flat_values, active = values.reshape(-1), np.flatnonzero(mask)
    k = topology.drop_count(len(active), rate)
    dropped = list(active[topology.set_drop(flat_values, active, k)])
    assert len(dropped) == len(set(dropped)) == k
    positive = sorted((i for i in active if flat_values[i] > 0), key=lambda i: (flat_values[i], i))
    negative = sorted((i for i in active if flat_values[i] <= 0), key=lambda i: (-flat_values[i], i))
    n_pos = sum(flat_values[i] > 0 for i in dropped)
    assert sorted(dropped) == sorted(positive[:n_pos] + negative[: k - n_pos])
    assert n_pos == min(len(positive), max(k - len(negative), (k + 1) // 2))


def test_score_grow_picks_largest_inactive_scores():
    survivors = np.array([0, 4])
    scores = np.array([9.0, -3.0, 1.0, 3.0, 8.0])
    np.testing.assert_array_equal(topology.score_grow(scores, survivors, 2), [1, 3])


def test_random_growth_is_uniform_over_inactive_positions():
    rng = np.random.default_rng(0)
    draws = [topology.random_grow(10, np.array([0, 1]), 3, rng) for _ in range(4000)]
    assert all(len(set(d)) == 3 for d in draws)
    counts = np.bincount(np.concatenate(draws), minlength=10)
    assert counts[:2].sum() == 0
    np.testing.assert_allclose(counts[2:] / 4000, 3 / 8, atol=0.03)
    # Every 3-subset of the 8 free positions is equally likely.
    subsets = np.bincount([sum(1 << int(i) for i in d) for d in draws], minlength=1 << 10)
    observed = subsets[subsets > 0]
    assert len(observed) == 56
    assert observed.min() > 40 and observed.max() < 110  # expected 4000 / 56 = 71


def test_random_growth_handles_large_and_nearly_full_matrices():
    rng = np.random.default_rng(1)
    grown = topology.random_grow(10_000, np.arange(0, 10_000, 2), 4_990, rng)
    assert len(np.unique(grown)) == 4_990 and np.all(grown % 2 == 1)


def test_cosine_drop_rate_matches_the_paper_schedule():
    assert topology.cosine_drop_rate(0, 100, 0.5) == 0.5
    assert math.isclose(topology.cosine_drop_rate(50, 100, 0.5), 0.005 + 0.495 / 2)
    assert math.isclose(topology.cosine_drop_rate(100, 100, 0.5), 0.005)
    assert math.isclose(topology.cosine_drop_rate(250, 100, 0.5), 0.005)


def test_cosine_drop_rate_reproduces_the_reference_run():
    # The authors' code on PTB, 3 epochs, p_0 = 0.5, updates at the end of each epoch.
    rates = [topology.cosine_drop_rate(epoch, 3, 0.5) for epoch in (1, 2, 3)]
    np.testing.assert_allclose(rates, [0.376, 0.129, 0.005], atol=5e-4)

"""Exactness of the drop-and-grow rules (property tests against brute force)."""

import math

import hypothesis
from hypothesis import strategies as st
import numpy as np

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


@hypothesis.given(matrices(), st.floats(0.001, 0.999), st.sampled_from(["magnitude", "set"]), st.sampled_from(["random", "score"]))
@hypothesis.settings(deadline=None, max_examples=300)
def test_update_keeps_count_exact_and_grows_only_inactive_positions(matrix, rate, drop, grow):
    values, mask, rng = matrix
    scores = rng.normal(size=values.shape)
    new_mask, dropped, grown = topology.drop_and_grow(values, mask, rate, drop=drop, grow=grow, scores=scores, rng=rng)
    active = int(mask.sum())
    k = min(active, math.ceil(rate * active - 1e-9))
    assert new_mask.sum() == active
    assert len(dropped) == len(set(dropped)) == k
    assert len(grown) == len(set(grown)) == k
    flat = mask.reshape(-1)
    assert flat[dropped].all()
    assert not new_mask.reshape(-1)[np.setdiff1d(dropped, grown)].any()
    after_drop = flat.copy()
    after_drop[dropped] = False
    assert not after_drop[grown].any()  # never grows where a weight survived the drop


@hypothesis.given(matrices(), st.floats(0.001, 0.999))
@hypothesis.settings(deadline=None, max_examples=300)
def test_magnitude_drop_is_exactly_the_k_smallest_with_deterministic_ties(matrix, rate):
    values, mask, _ = matrix
    flat_values, flat_mask = values.reshape(-1), mask.reshape(-1)
    active = np.flatnonzero(flat_mask)
    k = topology.drop_count(len(active), rate)
    expected = sorted(active, key=lambda i: (abs(flat_values[i]), i))[:k]
    dropped = topology.magnitude_drop(flat_values, flat_mask, k)
    assert list(dropped) == expected
    np.testing.assert_array_equal(dropped, topology.magnitude_drop(flat_values, flat_mask, k))


@hypothesis.given(matrices(), st.floats(0.001, 0.999))
@hypothesis.settings(deadline=None, max_examples=300)
def test_set_drop_takes_the_weights_closest_to_zero_from_each_sign(matrix, rate):
    values, mask, _ = matrix
    flat_values, flat_mask = values.reshape(-1), mask.reshape(-1)
    active = np.flatnonzero(flat_mask)
    k = topology.drop_count(len(active), rate)
    dropped = topology.set_drop(flat_values, flat_mask, k)
    assert len(dropped) == len(set(dropped)) == k
    positive = sorted((i for i in active if flat_values[i] > 0), key=lambda i: (flat_values[i], i))
    negative = sorted((i for i in active if flat_values[i] <= 0), key=lambda i: (-flat_values[i], i))
    n_pos = sum(flat_values[i] > 0 for i in dropped)
    assert sorted(dropped) == sorted(positive[:n_pos] + negative[: k - n_pos])
    assert n_pos == min(len(positive), max(k - len(negative), (k + 1) // 2))


def test_score_grow_picks_largest_inactive_scores():
    mask = np.array([True, False, False, False, True])
    scores = np.array([9.0, -3.0, 1.0, 3.0, 8.0])
    np.testing.assert_array_equal(topology.score_grow(scores, mask, 2), [1, 3])


def test_random_growth_is_uniform_over_inactive_positions():
    mask = np.zeros(10, dtype=bool)
    mask[:2] = True
    rng = np.random.default_rng(0)
    counts = np.bincount(np.concatenate([topology.random_grow(mask, 3, rng) for _ in range(4000)]), minlength=10)
    assert counts[:2].sum() == 0
    np.testing.assert_allclose(counts[2:] / 4000, 3 / 8, atol=0.03)


def test_cosine_drop_rate_matches_the_paper_schedule():
    assert topology.cosine_drop_rate(0, 100, 0.5) == 0.5
    assert math.isclose(topology.cosine_drop_rate(50, 100, 0.5), 0.005 + 0.495 / 2)
    assert math.isclose(topology.cosine_drop_rate(100, 100, 0.5), 0.005)
    assert math.isclose(topology.cosine_drop_rate(250, 100, 0.5), 0.005)


def test_cosine_drop_rate_reproduces_the_reference_run():
    # The authors' code on PTB, 3 epochs, p_0 = 0.5, updates at the end of each epoch.
    rates = [topology.cosine_drop_rate(epoch, 3, 0.5) for epoch in (1, 2, 3)]
    np.testing.assert_allclose(rates, [0.376, 0.129, 0.005], atol=5e-4)

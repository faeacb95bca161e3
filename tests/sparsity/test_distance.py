"""Sparse topology distance against hand-computed cases and a brute-force matching."""

import itertools

import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity import distance


def test_identical_and_disjoint_topologies():
    a = np.array([[1, 0], [0, 1], [1, 1]])
    assert ks.sparsity.topology_distance([a], [a]) == 0.0
    assert ks.sparsity.topology_distance([a], [1 - a], match_neurons=False) == 1.0
    rows = np.array([[1, 1], [0, 0]])  # every neuron of one uses only input 0, of the other only input 1
    assert ks.sparsity.topology_distance([rows], [1 - rows]) == 1.0


def test_hand_computed_case_without_and_with_neuron_matching():
    a = np.array([[1, 0], [1, 0], [0, 1]])  # neuron 0 <- {0, 1}, neuron 1 <- {2}
    b = np.array([[0, 1], [0, 1], [1, 0]])  # the same neurons, swapped
    assert ks.sparsity.topology_distance([a], [b], match_neurons=False) == 1.0
    assert ks.sparsity.topology_distance([a], [b]) == 0.0
    c = np.array([[1, 0], [0, 0], [0, 1]])  # neuron 0 <- {0}: Jaccard distance 1/2 to {0, 1}
    mean, per_matrix = ks.sparsity.topology_distance({"w": a, "v": a}, {"w": c, "v": a}, per_matrix=True)
    assert per_matrix == [0.25, 0.0] and mean == 0.125


def test_matching_equals_brute_force_over_permutations(rng):
    a = rng.random((6, 4)) < 0.4
    b = rng.random((6, 4)) < 0.4
    cost = distance.neuron_distances(a, b)
    best = min(np.mean([cost[i, p[i]] for i in range(4)]) for p in itertools.permutations(range(4)))
    assert np.isclose(ks.sparsity.topology_distance([a], [b]), best)


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        ks.sparsity.topology_distance([np.ones((2, 3))], [np.ones((3, 2))])
    with pytest.raises(ValueError, match="equally long"):
        ks.sparsity.topology_distance([np.ones((2, 3))], [])

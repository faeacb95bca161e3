"""The sparse topology distance between two snapshots of a model's masks."""

import numpy as np
from scipy import optimize

from keras_selfish.sparsity.masked_weight import MaskedWeight


def _as_array(mask):
    array = mask.mask.numpy() if isinstance(mask, MaskedWeight) else np.asarray(mask)
    return (array != 0).reshape(-1, array.shape[-1])


def neuron_distances(mask_a, mask_b):
    """Jaccard distance between the input sets of every pair of output neurons.

    Args:
        mask_a, mask_b: 0/1 arrays `(..., n_out)`; columns are output neurons.

    Returns:
        `(n_out, n_out)` array: entry `[i, j]` is `1 - |A_i & B_j| / |A_i | B_j|`,
        0 when both columns are empty.
    """
    a, b = _as_array(mask_a).astype(np.float32), _as_array(mask_b).astype(np.float32)
    if a.shape != b.shape:
        raise ValueError(f"Masks must have the same shape to compare, got {a.shape} and {b.shape}.")
    intersection = a.T @ b
    union = a.sum(0)[:, None] + b.sum(0)[None, :] - intersection
    return np.where(union > 0, 1.0 - intersection / np.maximum(union, 1.0), 0.0)


def topology_distance(masks_a, masks_b, match_neurons=True, per_matrix=False):
    """Sparse topology distance (NNSTD, Liu et al. 2020), as used by Selfish-RNN.

    For each matrix, output neurons of the two topologies are compared by the
    Jaccard distance of their input connections; with `match_neurons` they are
    first paired by an optimal assignment (Hungarian algorithm), so two topologies
    that differ only by a permutation of hidden units are at distance 0. The
    distance of a matrix is the mean over its neurons, in [0, 1] (0 = identical,
    1 = no shared connection). Each matrix is compared on its own (gate columns of
    an RNN kernel count as neurons; permutations are not carried across layers).
    The assignment costs O(n_out^3): for matrices with thousands of columns use
    `match_neurons=False` (neuron i against neuron i).

    Args:
        masks_a, masks_b: lists of masks (numpy arrays, mask variables' values or
            `MaskedWeight`s, e.g. `ks.sparsity.collect(model)` at two times), or
            dicts name -> mask with the same keys.
        match_neurons: pair neurons optimally before comparing.
        per_matrix: also return the distance of every matrix.

    Returns:
        the mean distance over matrices, or `(mean, [distance per matrix])`.
    """
    if isinstance(masks_a, dict):
        if set(masks_a) != set(masks_b):
            raise ValueError(f"Mask dicts name different weights: {sorted(set(masks_a) ^ set(masks_b))}.")
        masks_b = [masks_b[name] for name in masks_a]
        masks_a = list(masks_a.values())
    if len(masks_a) != len(masks_b) or not masks_a:
        raise ValueError(f"Need two equally long, non-empty lists of masks, got {len(masks_a)} and {len(masks_b)}.")
    distances = []
    for a, b in zip(masks_a, masks_b):
        cost = neuron_distances(a, b)
        if match_neurons:
            rows, cols = optimize.linear_sum_assignment(cost)
            distances.append(float(cost[rows, cols].mean()))
        else:
            distances.append(float(np.diagonal(cost).mean()))
    mean = float(np.mean(distances))
    return (mean, distances) if per_matrix else mean

"""Multiply-add counts of a sparse model, dense and sparse, for inference and training."""

import numpy as np

from keras_selfish.keras_private import flatten_layers

from keras_selfish.layers.embedding import MaskedEmbedding
from keras_selfish.sparsity.masked_weight import collect


def _uses_per_token(model):
    """`{mask id: matmul uses per token}` for every masked weight of `model`.

    An embedding table is a lookup (0 uses) unless it also serves as the tied softmax
    (`MaskedEmbedding(output_bias=True)`, called with `reverse=True`). Every other
    masked matrix (input, recurrent, highway level, softmax) is one matmul per token.
    """
    uses = {}
    for layer in flatten_layers(model):
        for mw in getattr(layer, "masked_weights", ()):
            tied_table = isinstance(layer, MaskedEmbedding) and layer.output_bias
            uses[id(mw.mask)] = 0 if isinstance(layer, MaskedEmbedding) and not tied_table else 1
    return uses


def flops(model, seq_len):
    """Floating-point operations of the masked matrices for `seq_len` tokens of one sequence.

    Counts `2 * weights` per matmul use (a multiply and an add), dense (every weight)
    and sparse (active weights only). Training follows the convention of the
    sparse-training literature (RigL, Selfish-RNN): forward plus a backward pass that
    costs twice the forward, i.e. 3x inference; sparse training counts active weights
    only. (This library computes dense gradients for inactive weights, so on real
    hardware its backward pass is dense; the count is the method's, not the kernel's.)
    Biases, gate nonlinearities and the embedding lookup are not counted.

    Args:
        model: a built model with masked layers.
        seq_len: tokens per sequence.

    Returns:
        `{"inference": {"dense", "sparse"}, "train": {"dense", "sparse"}, "sparse_over_dense"}`.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    uses = _uses_per_token(model)
    dense = sparse = 0
    for mw in collect(model):
        count = uses.get(id(mw.mask), 1)
        dense += 2 * mw.size * count
        sparse += 2 * int(np.count_nonzero(mw.mask.numpy())) * count
    dense, sparse = dense * seq_len, sparse * seq_len
    return {
        "inference": {"dense": dense, "sparse": sparse},
        "train": {"dense": 3 * dense, "sparse": 3 * sparse},
        "sparse_over_dense": sparse / dense if dense else 0.0,
    }

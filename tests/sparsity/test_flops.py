"""FLOP counts against hand-computed cases."""

import numpy as np
import pytest

import keras_selfish as ks


def test_untied_lm_counts_every_matrix_but_the_embedding_lookup():
    model = ks.models.language_model("lstm", 10, emsize=4, nhid=3, nlayers=1, batch_size=1, seq_len=2)
    ks.sparsity.initialize(model, 0.5, seed=0)
    # kernel 4x12, recurrent 3x12, softmax 3x10; embedding lookup not counted.
    dense_per_token = 2 * (4 * 12 + 3 * 12 + 3 * 10)
    sparse_per_token = 2 * (24 + 18 + 15)
    result = ks.sparsity.flops(model, seq_len=5)
    assert result["inference"] == {"dense": 5 * dense_per_token, "sparse": 5 * sparse_per_token}
    assert result["train"] == {"dense": 15 * dense_per_token, "sparse": 15 * sparse_per_token}
    assert np.isclose(result["sparse_over_dense"], sparse_per_token / dense_per_token)


def test_tied_table_counts_once_as_the_softmax():
    model = ks.models.language_model("awd_lstm", 10, emsize=4, nhid=6, nlayers=1, tied=True, batch_size=1, seq_len=2)
    result = ks.sparsity.flops(model, seq_len=1)
    # one LSTM layer of 4 units (tied: last layer = emsize): kernel 4x16, recurrent 4x16, softmax = table 10x4.
    assert result["inference"]["dense"] == 2 * (4 * 16 + 4 * 16 + 10 * 4)


def test_bad_sequence_length():
    model = ks.models.language_model("lstm", 10, emsize=4, nhid=3, nlayers=1, batch_size=1, seq_len=2)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        ks.sparsity.flops(model, 0)

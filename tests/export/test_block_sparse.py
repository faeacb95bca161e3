"""Block-sparse TFLite: weights that stay sparse at run time, a row-compressed embedding, sizes."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.export.inference import EmbeddingTable
from keras_selfish.export.inference import input_block
from tests.callbacks.lm import TIED_VOCAB
from tests.callbacks.lm import fit_with_selfish_rnn
from tests.callbacks.lm import tied_block_lm

VOCAB, WIDTH = 300, 40  # 40 inputs: 2.5 blocks of 16, so the partial last block is exercised
BLOCK = {None: 4, "dynamic": 16, "int8": 16}  # what TFLite's sparse kernels run per precision


def block_masks(model, density, block, seed=0, embedding_axis=1):
    """Masks whose active entries come in whole 1 x `block` blocks along each matrix's
    inputs (an embedding's `embedding_axis`: features, or vocabulary with 0), about
    `density` of the blocks active; weights outside zeroed, through the masked-weight protocol."""
    rng = np.random.default_rng(seed)
    for weight in ks.sparsity.collect(model):
        axis = embedding_axis if weight.variable.path.endswith("embeddings") else 0
        shape = np.moveaxis(np.zeros(weight.shape), axis, 0).shape
        active = rng.random((-(-shape[0] // block), *shape[1:])) < density
        mask = np.moveaxis(np.repeat(active, block, axis=0)[: shape[0]], 0, axis).astype("float32")
        weight.mask.assign(mask)
        weight.variable.assign(keras.ops.convert_to_numpy(weight.variable) * mask)
    return model


def lm(arch, vocab=VOCAB, width=WIDTH):
    extra = {"lstm": {"nlayers": 2}, "rhn": {"nlayers": 1, "depth": 2, "tied": True}}[arch]
    return ks.models.language_model(arch, vocab, emsize=width, nhid=width, batch_size=1, seq_len=9, **extra)


def trained(model):
    """A few steps on a learnable stream (the masks' constraint keeps the blocks), so perplexities mean something."""
    model.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = (rng.integers(0, VOCAB, (16, 1)) + np.arange(10)) % VOCAB
    model.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=3, verbose=0)
    return model


def perplexity(logits, ids):
    logits = logits[:-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def stepped(runner, ids):
    runner.reset()
    return np.stack([runner.step(t) for t in ids])


def test_input_block_finds_the_widest_whole_blocks():
    model = block_masks(lm("lstm", vocab=20, width=20), 0.5, 16)
    embedding, kernel = ks.sparsity.collect(model)[:2]
    assert input_block(embedding.variable, axis=1) == 16  # 20 features: a block of 16 and a partial one of 4
    assert input_block(kernel.variable) == 16
    pattern = np.zeros(kernel.shape, "float32")
    pattern[4:8] = 1.0  # 1x4 blocks that are not whole 1x16 blocks
    kernel.mask.assign(pattern)
    assert input_block(kernel.variable) == 4
    pattern[5, 0] = 0.0
    kernel.mask.assign(pattern)
    assert input_block(kernel.variable) == 1
    assert input_block(keras.Variable(np.ones((4, 4)))) is None  # no mask


@pytest.mark.parametrize("block, rows_per_block", [(1, 1), (4, 1), (16, 1), (1, 8)])
def test_row_compressed_embedding_rebuilds_the_rows(block, rows_per_block):
    rng = np.random.default_rng(block)
    table = rng.normal(size=(32, 45)).astype("float32")
    blocks = np.repeat(rng.random((32 // rows_per_block, -(-45 // block))) < 0.3, rows_per_block, axis=0)
    blocks[24:] = False  # empty rows
    blocks[4] = True  # a full row, partial last block included
    table *= np.repeat(blocks, block, axis=1)[:, :45]
    embedding = EmbeddingTable(table, block, compressed=True)
    tokens = np.array([0, 3, 4, 31, 7, 25, 8, 9], np.int32)
    np.testing.assert_array_equal(embedding(tf.constant(tokens)).numpy(), table[tokens])
    assert embedding.values.shape[0] == 1 + blocks.sum()  # only the active blocks, after one zero block
    if rows_per_block == 1:  # rows rarely repeat the row before: one column per value
        assert embedding.column_start is None and embedding.columns.shape[0] == embedding.values.shape[0]
    else:  # rows like the one before share its columns
        owners = np.concatenate([[True], np.any(blocks[1:] != blocks[:-1], axis=1)])
        assert embedding.columns.shape[0] == 1 + blocks[owners].sum() < 0.3 * embedding.values.shape[0]


@pytest.mark.parametrize("quantize", [None, "dynamic", "int8"])
def test_block_sparse_weights_stay_sparse_at_run_time_and_match_keras(tmp_path, quantize):
    model = trained(block_masks(lm("lstm"), 0.33, BLOCK[quantize]))
    ids = np.random.default_rng(1).integers(0, VOCAB, 100).astype("int32")
    expected = keras.ops.convert_to_numpy(model(ids[None], training=False))[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The sparse layout")  # no fallback to the dense layout
        path = ks.export.tflite(model, tmp_path / "sparse.tflite", quantize=quantize, representative_ids=ids)
    assert "DENSIFY" not in ks.export.operators(path)
    matrices = [w for w in ks.export.weight_tensors(path) if w["op"] == "FULLY_CONNECTED"]
    assert len(matrices) == 2 + 1 and all(w["block"] == BLOCK[quantize] for w in matrices), matrices
    runner = ks.export.TFLiteRunner(path)
    assert runner.resolver == "builtin" and "resolver='builtin'" in repr(runner)
    if quantize is not None:  # XNNPack crashes on 1x16 block-sparse weights: never used for them
        with pytest.warns(UserWarning, match="on which XNNPack crashes"):
            assert ks.export.TFLiteRunner(path, use_xnnpack=True).resolver == "builtin"
    logits = stepped(runner, ids)
    dense_path = ks.export.tflite(model, tmp_path / "dense.tflite", quantize=quantize, sparse=False, representative_ids=ids)
    dense_runner = ks.export.TFLiteRunner(dense_path)
    assert dense_runner.resolver == "xnnpack"
    dense_error = np.abs(stepped(dense_runner, ids) - expected).max()
    if quantize is None:
        np.testing.assert_allclose(logits, expected, atol=1e-4)
    else:  # the quantisation error of the dense export of the same weights, not more
        assert np.abs(logits - expected).max() <= 1.5 * dense_error + 1e-3, (np.abs(logits - expected).max(), dense_error)
    assert abs(perplexity(logits, ids) / perplexity(expected, ids) - 1) < (1e-3 if quantize is None else 0.02)


@pytest.mark.parametrize("arch", ["lstm", "rhn"])
@pytest.mark.parametrize("quantize", [None, "dynamic", "int8"])
def test_sparse_file_is_smaller_than_dense_tied_or_not(tmp_path, arch, quantize):
    model = block_masks(lm(arch), 0.33, BLOCK[quantize])
    ids = np.random.default_rng(1).integers(0, VOCAB, 50).astype("int32")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The sparse layout")  # the sparse layout itself, no fallback
        sparse = ks.export.tflite(model, tmp_path / "sparse.tflite", quantize=quantize, representative_ids=ids)
    dense = ks.export.tflite(model, tmp_path / "dense.tflite", quantize=quantize, sparse=False, representative_ids=ids)
    assert sparse.stat().st_size < 0.75 * dense.stat().st_size
    tables = [w for w in ks.export.weight_tensors(sparse) if w["op"] == "GATHER"]
    dense_table = next(w for w in ks.export.weight_tensors(dense) if w["op"] == "GATHER")
    assert sum(w["bytes"] for w in tables) < 0.5 * dense_table["bytes"]  # the embedding is stored row-compressed
    runner = ks.export.TFLiteRunner(sparse)
    np.testing.assert_allclose(runner.step(ids[0]), ks.export.TFLiteRunner(dense).step(ids[0]), atol=0.05 if quantize else 1e-5)


def test_embedding_blocked_along_the_vocabulary_is_stored_compressed(tmp_path):
    model = block_masks(lm("lstm"), 0.33, 16, embedding_axis=0)
    sparse = ks.export.tflite(model, tmp_path / "sparse.tflite", quantize="dynamic")
    dense = ks.export.tflite(model, tmp_path / "dense.tflite", quantize="dynamic", sparse=False)
    table = next(w for w in ks.export.weight_tensors(dense) if w["op"] == "GATHER")
    assert sum(w["bytes"] for w in ks.export.weight_tensors(sparse) if w["op"] == "GATHER") < 0.4 * table["bytes"]
    ids = np.random.default_rng(1).integers(0, VOCAB, 20)
    expected = keras.ops.convert_to_numpy(model(ids[None], training=False))[0]
    assert np.abs(stepped(ks.export.TFLiteRunner(sparse), ids) - expected).max() <= 1.5 * np.abs(stepped(ks.export.TFLiteRunner(dense), ids) - expected).max() + 1e-3


def test_sparse_layout_that_does_not_pay_falls_back_to_the_dense_file(tmp_path):
    model = lm("lstm", vocab=60, width=16)
    ks.sparsity.initialize(model, 0.33, seed=0)  # unstructured, tiny: index overheads dominate when quantised
    with pytest.warns(UserWarning, match="writing the dense one"):
        sparse = ks.export.tflite(model, tmp_path / "sparse.tflite", quantize="dynamic")
    dense = ks.export.tflite(model, tmp_path / "dense.tflite", quantize="dynamic", sparse=False)
    assert sparse.stat().st_size == dense.stat().st_size


def test_tied_lm_trained_with_block_masks_exports_a_block_sparse_softmax(tmp_path):
    # Blocks from ks.sparsity.initialize(block_size=16) and Selfish-RNN updates, not by hand: the
    # table's blocks run along its features, the inputs of the tied softmax's FULLY_CONNECTED.
    model = tied_block_lm()
    fit_with_selfish_rnn(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The sparse layout")  # the sparse layout itself, no fallback
        sparse = ks.export.tflite(model, tmp_path / "sparse.tflite", quantize="dynamic")
    dense = ks.export.tflite(model, tmp_path / "dense.tflite", quantize="dynamic", sparse=False)
    assert "DENSIFY" not in ks.export.operators(sparse)
    softmax = [w for w in ks.export.weight_tensors(sparse) if w["op"] == "FULLY_CONNECTED" and w["shape"][0] == TIED_VOCAB]
    assert len(softmax) == 1 and softmax[0]["block"] == 16, softmax
    assert sparse.stat().st_size < dense.stat().st_size

"""Block-structured masks: exact block counts, whole blocks after every rule, compiled = numpy drop set."""

import math

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity import fused_update
from keras_selfish.sparsity import topology
from keras_selfish.sparsity.blocks import Blocks


def reference_blocks(rows, cols, size, axis=0):
    """Flat weight positions of every block, by hand: block-row-major along axis 0
    (`size` rows of a column); along axis 1, row by row (`size` features of a row)."""
    if axis == 1:
        return [[r * cols + c for c in range(j, min(j + size, cols))] for r in range(rows) for j in range(0, cols, size)]
    return [[r * cols + c for r in range(i, min(i + size, rows))] for i in range(0, rows, size) for c in range(cols)]


def reference_score(scores, block, size):
    """A block's score: the sum over its weights, scaled to a full block."""
    return sum(float(scores[p]) for p in block) * (size / len(block))  # the scale as Blocks.reduce rounds it


def block_mask(rng, rows, cols, size, density, axis=0):
    """A whole-block mask, as numpy booleans of shape (rows, cols)."""
    mask = np.zeros(rows * cols, bool)
    for block in reference_blocks(rows, cols, size, axis):
        mask[block] = rng.random() < density
    return mask.reshape(rows, cols)


def active_blocks(mask, size, axis=0):
    """Per block: all active (True), all inactive (False); asserts every block is whole."""
    rows, cols = mask.shape
    states = []
    for block in reference_blocks(rows, cols, size, axis):
        values = mask.reshape(-1)[block]
        assert values.all() or not values.any(), "a block is partly active"
        states.append(bool(values[0]))
    return np.array(states)


@st.composite
def block_matrices(draw):
    size = draw(st.integers(2, 5))
    gates = draw(st.integers(1, 3))
    rows = draw(st.integers(1, 13))  # often not a multiple of the block size
    cols = gates * draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mask = block_mask(rng, rows, cols, size, draw(st.floats(0.1, 0.9)))
    values = np.round(rng.normal(size=(rows, cols)), 1) * mask  # rounded: ties
    return values, mask, size, gates, rng


def test_blocks_match_a_hand_numbering_with_a_partial_last_block():
    rows, cols, size = 7, 3, 3
    blocks = Blocks((rows, cols), size)
    expected = reference_blocks(rows, cols, size)
    assert blocks.grid == (3, 3) and blocks.count == len(expected) == 9
    scores = np.arange(rows * cols, dtype=float) ** 1.5
    np.testing.assert_allclose(blocks.reduce(scores.reshape(rows, cols)).reshape(-1), [reference_score(scores, b, size) for b in expected])
    for q, block in enumerate(expected):
        np.testing.assert_array_equal(blocks.positions([q]), block)
    states = np.arange(9) % 2 == 0
    np.testing.assert_array_equal(blocks.expand(states.reshape(3, 3)).reshape(-1)[expected[7]], [states[7]])
    assert blocks.is_whole(blocks.expand(states.reshape(3, 3)))
    broken = blocks.expand(states.reshape(3, 3)).copy()
    broken[1, 0] = not broken[1, 0]
    assert not blocks.is_whole(broken)


@st.composite
def block_tables(draw):
    """A table `(vocab, features)` blocked along its features (gates, if any, split the vocabulary)."""
    size = draw(st.integers(2, 5))
    gates = draw(st.integers(1, 3))
    rows = gates * draw(st.integers(1, 4))
    cols = draw(st.integers(1, 13))  # often not a multiple of the block size
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mask = block_mask(rng, rows, cols, size, draw(st.floats(0.1, 0.9)), axis=1)
    values = np.round(rng.normal(size=(rows, cols)), 1) * mask  # rounded: ties
    return values, mask, size, gates, rng


def check_block_update(matrix, rate, drop, grow, gate_wise, axis=0):
    """One `update_matrix` on blocks along `axis` moves whole blocks at exact counts, by the rules' ranking."""
    values, mask, size, gates, rng = matrix
    rows, cols = mask.shape
    scores = rng.normal(size=values.shape)
    dropped, grown = topology.update_matrix(
        values, mask, rate, drop, grow, scores, rng, gate_sections=gates, gate_axis=1 - axis, gate_wise=gate_wise, block_size=size, block_axis=axis
    )
    new_mask = mask.reshape(-1).copy()
    new_mask[dropped] = False
    survivors = new_mask.copy()
    new_mask[grown] = True
    before, after = active_blocks(mask, size, axis), active_blocks(new_mask.reshape(mask.shape), size, axis)
    active_blocks(survivors.reshape(mask.shape), size, axis)
    # Block b's gate: its line's gate (gates split the lines across the blocks, a block lies in one line).
    blocks = reference_blocks(rows, cols, size, axis)
    lines = cols if axis == 0 else rows
    gate_of = np.array([divmod(b[0], cols)[1 - axis] // (lines // gates) for b in blocks])
    groups = range(gates) if gate_wise else [None]
    for g in groups:
        members = gate_of == g if g is not None else np.ones(len(before), bool)
        assert after[members].sum() == before[members].sum()
    k = sum(topology.drop_count(int(before[gate_of == g].sum() if g is not None else before.sum()), rate) for g in groups)
    assert len(set(dropped)) == len(dropped) and len(set(grown)) == len(grown)
    assert (before & ~active_blocks(survivors.reshape(mask.shape), size, axis)).sum() == k
    assert mask.reshape(-1)[dropped].all() and not survivors[grown].any()
    if drop == "magnitude" and not gate_wise:  # the k active blocks of smallest L1 norm, ties by block index
        magnitudes = np.abs(values).reshape(-1)
        ranked = sorted(np.flatnonzero(before), key=lambda q: (reference_score(magnitudes, blocks[q], size), q))
        assert sorted(dropped) == sorted(p for q in ranked[:k] for p in blocks[q])
    if grow == "score" and not gate_wise:  # the k free blocks of largest sum of |score|
        free = np.flatnonzero(~active_blocks(survivors.reshape(mask.shape), size, axis))
        ranked = sorted(free, key=lambda q: (-reference_score(np.abs(scores).reshape(-1), blocks[q], size), q))
        assert sorted(grown) == sorted(p for q in ranked[:k] for p in blocks[q])


def check_compiled_block_update(matrix, rate, seed, axis=0):
    """The compiled rule on blocks along `axis` drops the numpy rule's blocks and grows as many free ones."""
    values, mask, size, _, rng = matrix
    values, mask = values.astype("float32"), mask.astype("float32")
    workspace = fused_update.workspace(values.shape, values.dtype, size, axis)
    change = workspace.update(values.reshape(-1), mask.reshape(-1), rate, seed)
    dropped, _ = topology.update_matrix(values, mask, rate, block_size=size, block_axis=axis, rng=rng)
    expected = mask.reshape(-1) != 0
    expected[dropped] = False
    np.testing.assert_array_equal(change.survivors, expected)
    before, after = active_blocks(mask != 0, size, axis), active_blocks(change.new_mask.reshape(mask.shape), size, axis)
    assert after.sum() == before.sum()
    assert np.all(change.new_mask[change.survivors])
    assert change.dropped == len(dropped) == int(np.count_nonzero((mask.reshape(-1) != 0) & ~change.survivors))


def test_table_blocks_match_a_hand_numbering_along_the_features():
    rows, cols, size = 3, 7, 3  # features 7: blocks of 3, 3 and a partial one of 1 per row
    blocks = Blocks((rows, cols), size, axis=1)
    expected = reference_blocks(rows, cols, size, axis=1)
    assert blocks.grid == (3, 3) and blocks.count == len(expected) == 9
    scores = np.arange(rows * cols, dtype=float) ** 1.5
    np.testing.assert_allclose(blocks.reduce(scores.reshape(rows, cols)).reshape(-1), [reference_score(scores, b, size) for b in expected])
    for q, block in enumerate(expected):
        np.testing.assert_array_equal(blocks.positions([q]), block)
    states = (np.arange(9) % 2 == 0).reshape(3, 3)
    weights = blocks.expand(states)
    for q, block in enumerate(expected):
        np.testing.assert_array_equal(weights.reshape(-1)[block], states.reshape(-1)[q])
    np.testing.assert_array_equal(blocks.of_mask(weights), states)
    assert blocks.is_whole(weights) and not Blocks((rows, cols), size).is_whole(weights)
    broken = weights.copy()
    broken[0, 1] = not broken[0, 1]
    assert not blocks.is_whole(broken)


@hypothesis.given(block_matrices(), st.floats(0.001, 0.999), st.sampled_from(["magnitude", "set"]), st.sampled_from(["random", "score"]), st.booleans())
@hypothesis.settings(deadline=None, max_examples=300)
def test_block_updates_move_whole_blocks_at_exact_block_counts(matrix, rate, drop, grow, gate_wise):
    check_block_update(matrix, rate, drop, grow, gate_wise)


@hypothesis.given(block_tables(), st.floats(0.001, 0.999), st.sampled_from(["magnitude", "set"]), st.sampled_from(["random", "score"]), st.booleans())
@hypothesis.settings(deadline=None, max_examples=300)
def test_table_updates_move_whole_blocks_of_features_at_exact_block_counts(table, rate, drop, grow, gate_wise):
    check_block_update(table, rate, drop, grow, gate_wise, axis=1)


@hypothesis.given(block_matrices(), st.floats(0.001, 0.999), st.integers(0, 2**63))
@hypothesis.settings(deadline=None, max_examples=200)
def test_compiled_block_rule_drops_the_numpy_rule_blocks_and_grows_free_blocks(matrix, rate, seed):
    check_compiled_block_update(matrix, rate, seed)


@hypothesis.given(block_tables(), st.floats(0.001, 0.999), st.integers(0, 2**63))
@hypothesis.settings(deadline=None, max_examples=200)
def test_compiled_table_rule_drops_the_numpy_rule_blocks_and_grows_free_blocks(table, rate, seed):
    check_compiled_block_update(table, rate, seed, axis=1)


def test_compiled_block_growth_is_uniform_over_free_blocks():
    size = 4
    blocks = Blocks((6, 2), size)  # 2 x 2 blocks, the second block row partial (2 rows)
    mask = blocks.expand(np.array([[1, 1], [0, 0]])).astype("float32")
    values = mask * np.arange(1, 7, dtype="float32")[:, None]  # blocks 0 and 1 tie: block 0 drops
    workspace = fused_update.workspace(mask.shape, "float32", size)
    counts = np.zeros(4)
    for seed in range(3000):  # rate 0.5 of 2 blocks: one dropped, one grown among blocks 0, 2, 3
        change = workspace.update(values.reshape(-1), mask.reshape(-1), 0.5, seed)
        survivors = blocks.of_mask(change.survivors.reshape(mask.shape)).reshape(-1)
        np.testing.assert_array_equal(survivors, [False, True, False, False])
        counts += blocks.of_mask(change.new_mask.reshape(mask.shape)).reshape(-1) & ~survivors
    np.testing.assert_allclose(counts / 3000, [1 / 3, 0, 1 / 3, 1 / 3], atol=0.04)


def test_block_rules_refuse_non_finite_weights_naming_the_weight_count(rng):
    size = 4
    mask = block_mask(rng, 9, 8, size, 0.5)
    values = (rng.normal(size=mask.shape) * mask).astype("float32")
    values.reshape(-1)[np.flatnonzero(mask)[:3]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(topology.NonFiniteValues, match="3 of its .* active weights") as numpy_rule:
        topology.update_matrix(values, mask, 0.3, block_size=size, rng=rng)
    with pytest.raises(topology.NonFiniteValues) as compiled:
        fused_update.workspace(mask.shape, "float32", size).update(values.reshape(-1), mask.reshape(-1).astype("float32"), 0.3, 0)
    assert (compiled.value.count, compiled.value.total) == (numpy_rule.value.count, numpy_rule.value.total) == (3, int(mask.sum()))
    with pytest.raises(topology.NonFiniteValues):
        topology.magnitude_prune(values, mask, 2, block_size=size)


@pytest.mark.parametrize("rows", [8, 11])
def test_block_pruning_keeps_the_blocks_of_largest_l1_norm(rows, rng):
    size, cols = 4, 5
    mask = np.ones((rows, cols), bool)
    values = rng.normal(size=(rows, cols))
    blocks = reference_blocks(rows, cols, size)
    keep = 6
    dropped = topology.magnitude_prune(values, mask, keep, block_size=size)
    magnitudes = np.abs(values).reshape(-1)
    ranked = sorted(range(len(blocks)), key=lambda q: reference_score(magnitudes, blocks[q], size))
    assert sorted(dropped) == sorted(p for q in ranked[: len(blocks) - keep] for p in blocks[q])


@pytest.mark.parametrize("features", [8, 11])
def test_table_pruning_keeps_the_blocks_of_features_of_largest_l1_norm(features, rng):
    size, vocab = 4, 5
    values = rng.normal(size=(vocab, features))
    blocks = reference_blocks(vocab, features, size, axis=1)
    dropped = topology.magnitude_prune(values, np.ones(values.shape, bool), 6, block_size=size, block_axis=1)
    magnitudes = np.abs(values).reshape(-1)
    ranked = sorted(range(len(blocks)), key=lambda q: reference_score(magnitudes, blocks[q], size))
    assert sorted(dropped) == sorted(p for q in ranked[: len(blocks) - 6] for p in blocks[q])


def lm(width=10, vocab=30):
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            ks.layers.MaskedEmbedding(vocab, width, name="embed"),
            ks.layers.SparseLSTM(width, return_sequences=True, name="lstm"),
            ks.layers.SparseGRU(7, return_sequences=True, name="gru"),
            ks.layers.MaskedDense(vocab, name="softmax"),
        ]
    )


@pytest.mark.parametrize("distribution", ["uniform", "er"])
@pytest.mark.parametrize("size", [4, 16])
def test_initialize_gives_whole_blocks_at_exact_block_counts(distribution, size):
    model = lm()  # inputs 10 and 7, 10 features: partial last blocks
    weights = ks.sparsity.initialize(model, 0.3, distribution=distribution, seed=0, block_size=size)
    # The embedding table takes blocks too, along its features (axis 1: a tied softmax's inputs).
    assert [mw.block_axis for mw in weights] == [1] + [0] * (len(weights) - 1)
    counts = []
    for mw in weights:
        assert mw.block_size == size
        mask = mw.mask.numpy()
        states = active_blocks(mask != 0, size, mw.block_axis)
        counts.append(int(states.sum()))
        if distribution == "uniform":
            assert counts[-1] == math.floor(0.3 * len(states) + 0.5)
        np.testing.assert_array_equal(mw.variable.numpy()[mask == 0], 0.0)
    if distribution == "er":
        units = [mw.blocks.count for mw in weights]
        assert counts and sum(int(mw.blocks.of_mask(mw.mask.numpy()).sum()) for mw in weights) == math.floor(0.3 * sum(units) + 0.5)


def test_initialize_with_block_size_one_gives_the_unstructured_masks():
    first, second = lm(), lm()
    ks.sparsity.initialize(first, 0.3, seed=3)
    ks.sparsity.initialize(second, 0.3, seed=3, block_size=1)
    for a, b in zip(ks.sparsity.collect(first), ks.sparsity.collect(second)):
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())


def test_bad_block_sizes_are_rejected():
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        ks.sparsity.initialize(lm(), 0.3, block_size=0)
    with pytest.raises(TypeError, match="block_size must be a positive integer"):
        ks.sparsity.initialize(lm(), 0.3, block_size=1.5)
    model = lm()
    embedding, kernel = ks.sparsity.collect(model)[:2]
    with pytest.raises(ValueError, match="takes no blocks"):  # embeddings take blocks now: a weight declared without
        ks.sparsity.MaskedWeight(embedding.variable, embedding.mask, block_axis=None, block_size=4)
    with pytest.raises(ValueError, match="gates along axis 1"):  # a block would straddle gates
        ks.sparsity.MaskedWeight(kernel.variable, kernel.mask, num_gates=2, gate_axis=0, block_size=4)
    with pytest.raises(ValueError, match="gates along axis 0"):  # along a table's features, gates split the vocabulary
        ks.sparsity.MaskedWeight(embedding.variable, embedding.mask, num_gates=2, gate_axis=1, block_axis=1, block_size=4)


def block_lm(width=10, vocab=30):
    """Every masked layer kind, each keeping its block sizes in its config (`KeepsBlockSizes`)."""
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            ks.layers.MaskedEmbedding(vocab, width, name="embed"),
            ks.layers.SparseLSTM(width, return_sequences=True, name="lstm"),
            ks.layers.ONLSTM(width, chunk_size=2, return_sequences=True, name="onlstm"),
            ks.layers.RHN(width, depth=2, return_sequences=True, name="rhn"),
            ks.layers.SparseGRU(width, return_sequences=True, name="gru"),
            ks.layers.MaskedDense(vocab, name="softmax"),
        ]
    )


def test_block_sizes_survive_keras_save_and_from_config(tmp_path):
    model = block_lm()
    ks.sparsity.initialize(model, 0.3, seed=0, block_size=4)
    expected = [(mw.shape, mw.block_size) for mw in ks.sparsity.collect(model)]
    assert len(expected) == 1 + 2 + 2 + 3 + 2 + 1 and all(size == 4 for _, size in expected)
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    rebuilt = keras.Sequential.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    for copy in (loaded, rebuilt):
        assert [(mw.shape, mw.block_size) for mw in ks.sparsity.collect(copy)] == expected
        for mw, original in zip(ks.sparsity.collect(copy), ks.sparsity.collect(model)):
            np.testing.assert_array_equal(mw.mask.numpy(), original.mask.numpy())
            assert active_blocks(mw.mask.numpy() != 0, 4, mw.block_axis).sum() == active_blocks(original.mask.numpy() != 0, 4, mw.block_axis).sum()


def test_configs_without_block_sizes_build_unstructured_and_stay_unchanged():
    model = block_lm()
    ks.sparsity.initialize(model, 0.3, seed=0)  # unstructured: the configs carry no block sizes
    config = model.get_config()
    assert "mask_blocks" not in str(config)
    rebuilt = keras.Sequential.from_config(config)  # as a file saved before block sizes were kept
    assert [mw.block_size for mw in ks.sparsity.collect(rebuilt)] == [1] * 11


@pytest.mark.parametrize("arch, tied", [("lstm", True), ("rhn", True), ("lstm", False)])
def test_language_model_keeps_its_block_sizes_through_a_keras_file(tmp_path, arch, tied):
    model = ks.models.language_model(arch, 30, emsize=8, nhid=8, nlayers=2, depth=2, tied=tied, batch_size=2, seq_len=3)
    ks.sparsity.initialize(model, 0.5, seed=0, block_size=4)
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert [(mw.shape, mw.block_size) for mw in ks.sparsity.collect(loaded)] == [(mw.shape, 4) for mw in ks.sparsity.collect(model)]
    dense = ks.models.language_model(arch, 30, emsize=8, nhid=8, nlayers=2, depth=2, tied=tied)
    assert "mask_blocks" not in dense.get_config()  # unstructured configs are as before

"""Exact-count initialisation, distributions, collection and errors."""

import math

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity.distributions import active_counts

shapes = st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=6)
densities = st.floats(0.01, 1.0)


@hypothesis.given(shapes, densities)
@hypothesis.settings(deadline=None, max_examples=200)
def test_uniform_gives_round_density_times_size_per_matrix(shape_list, density):
    counts = active_counts(shape_list, density, "uniform")
    assert counts == [math.floor(density * a * b + 0.5) for a, b in shape_list]


@hypothesis.given(shapes, densities, st.sampled_from(["er", "erk"]))
@hypothesis.settings(deadline=None, max_examples=200)
def test_er_total_is_exact_and_capped(shape_list, density, distribution):
    sizes = [a * b for a, b in shape_list]
    counts = active_counts(shape_list, density, distribution)
    assert sum(counts) == math.floor(density * sum(sizes) + 0.5)
    assert all(0 <= c <= n for c, n in zip(counts, sizes))


def test_er_density_is_proportional_to_the_er_score():
    shape_list = [(100, 400), (400, 400), (50, 10000)]
    counts = active_counts(shape_list, 0.3, "er")
    densities = [c / (a * b) for c, (a, b) in zip(counts, shape_list)]
    scores = [(a + b) / (a * b) for a, b in shape_list]
    ratios = [d / s for d, s in zip(densities, scores)]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-3)


def test_er_caps_small_matrices_at_density_one_and_rescales():
    shape_list = [(2, 3), (500, 500)]
    counts = active_counts(shape_list, 0.5, "er")
    assert counts[0] == 6
    assert sum(counts) == round(0.5 * (6 + 250000))


def lm(vocab=30, width=8, steps=5):
    return keras.Sequential(
        [
            keras.Input((steps,), dtype="int32"),
            ks.layers.MaskedEmbedding(vocab, width, name="embed"),
            ks.layers.SparseLSTM(width, return_sequences=True, name="lstm"),
            ks.layers.SparseGRU(width, return_sequences=True, name="gru"),
            ks.layers.MaskedDense(vocab, name="softmax"),
        ]
    )


@hypothesis.given(st.floats(0.05, 1.0), st.sampled_from(["uniform", "er", "erk"]), st.integers(0, 2**31))
@hypothesis.settings(deadline=None, max_examples=15)
def test_initialize_sets_exact_counts_and_zeroes_inactive_weights(density, distribution, seed):
    keras.backend.clear_session()
    model = lm()
    before = {v.path: v.numpy() for v in model.trainable_weights}
    weights = ks.sparsity.initialize(model, density, distribution=distribution, seed=seed)
    expected = active_counts([mw.shape for mw in weights], density, distribution)
    for mw, count in zip(weights, expected):
        mask = mw.mask.numpy()
        value = mw.variable.numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert int(mask.sum()) == count
        assert np.all(value[mask == 0] == 0)
        np.testing.assert_array_equal(value[mask == 1], before[mw.variable.path][mask == 1])
    assert ks.sparsity.total_active(model) == sum(expected)


def test_same_seed_same_masks_other_seed_other_masks():
    def masks(seed):
        keras.backend.clear_session()
        model = lm()
        ks.sparsity.initialize(model, 0.3, seed=seed)
        return [mw.mask.numpy() for mw in ks.sparsity.collect(model)]

    a, b, c = masks(7), masks(7), masks(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_exclude_keeps_a_layer_dense_and_out_of_the_budget():
    model = lm()
    weights = ks.sparsity.initialize(model, 0.25, exclude=["embed"], seed=0)
    assert "embed" not in {mw.name.split("/")[1] for mw in weights}
    embed = model.get_layer("embed")
    assert np.all(embed.embeddings_mask.numpy() == 1)
    assert np.all(embed.embeddings.numpy() != 0)
    assert len(weights) == len(ks.sparsity.collect(model)) - 1


class Block(keras.layers.Layer):
    """A user layer that nests masked layers without implementing anything itself."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = ks.layers.MaskedDense(4)
        self.rnn = keras.layers.RNN([ks.layers.SparseLSTMCell(4), ks.layers.SparseGRUCell(4)], return_sequences=True)

    def call(self, x):
        return self.rnn(self.inner(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.bi = keras.layers.Bidirectional(ks.layers.SparseLSTM(3, return_sequences=True))
        self.head = keras.layers.TimeDistributed(ks.layers.MaskedDense(2))

    def call(self, x):
        return self.head(self.bi(self.block(x)))


def test_collect_finds_every_masked_weight_once_in_nested_models():
    model = Subclassed()
    model(np.zeros((2, 5, 6), "float32"))
    found = ks.sparsity.collect(model)
    # inner dense 1 + stacked cells 2 x 2 + bidirectional 2 x 2 + head 1
    assert len(found) == 10
    assert len({id(mw.mask) for mw in found}) == 10
    functional = keras.Model(*(lambda i: (i, model(i)))(keras.Input((5, 6))))
    assert len(ks.sparsity.collect(functional)) == 10


def test_summary_reports_counts_and_per_gate_densities(capsys):
    model = lm()
    ks.sparsity.initialize(model, 0.5, seed=1)
    rows = ks.sparsity.summary(model)
    printed = capsys.readouterr().out
    assert "total" in printed and "lstm/cell/kernel" in printed and "f=" in printed
    for row, mw in zip(rows, ks.sparsity.collect(model)):
        mask = mw.mask.numpy()
        assert row["active"] == int(mask.sum()) and row["size"] == mask.size
        blocks = np.split(mask, mw.num_gates, axis=-1)
        assert [g["active"] for g in row["gates"]] == [int(b.sum()) for b in blocks]
        assert [g["gate"] for g in row["gates"]] == list(mw.gate_names)
    assert ks.sparsity.summary(model, print_fn=None) == rows


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), "0.3", True, None])
def test_bad_density_is_a_clear_error(density):
    with pytest.raises(ValueError, match="density"):
        ks.sparsity.initialize(lm(), density)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="distribution"):
        ks.sparsity.initialize(lm(), 0.5, distribution="gaussian")
    with pytest.raises(ValueError, match="exclude.*'nope'"):
        ks.sparsity.initialize(lm(), 0.5, exclude=["nope"])
    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no masked weights"):
        ks.sparsity.initialize(dense_only, 0.5)
    unbuilt = keras.Sequential([ks.layers.MaskedDense(2)])
    with pytest.raises(ValueError, match="not built"):
        ks.sparsity.initialize(unbuilt, 0.5)
    with pytest.raises(TypeError, match="keras Layer"):
        ks.sparsity.collect("model")

"""Language-model architectures: shapes, tied weights sharing one mask, serialisation, presets."""

import keras
import numpy as np
import pytest

import keras_selfish as ks

SMALL = {"vocab_size": 30, "emsize": 8, "nhid": 8, "batch_size": 2, "seq_len": 5}


@pytest.mark.parametrize(
    "arch, extra",
    [
        ("lstm", {"dropout": 0.3}),
        ("rhn", {"depth": 2, "tied": True, "dropouth": 0.2, "dropouti": 0.3, "dropoute": 0.1}),
        ("awd_lstm", {"nlayers": 3, "nhid": 12, "tied": True, "wdrop": 0.3, "dropoute": 0.1}),
        ("onlstm", {"nlayers": 2, "nhid": 12, "chunk_size": 4, "tied": True, "wdrop": 0.2}),
    ],
)
def test_architectures_train_and_round_trip(tmp_path, arch, extra):
    config = {**SMALL, **extra}
    model = ks.models.language_model(arch, vocabulary=[f"w{i}" for i in range(30)], **config)
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(0, 30, (4, 5)).astype("int32")
    model.fit(x, np.roll(x, -1, axis=1), batch_size=2, epochs=1, verbose=0)
    assert model(x[:2]).shape == (2, 5, 30)
    for mw in ks.sparsity.collect(model):
        assert np.all(mw.variable.numpy()[mw.mask.numpy() == 0] == 0)
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    np.testing.assert_allclose(loaded(x[:2]), model(x[:2]), atol=1e-5)
    assert loaded.vocabulary == model.vocabulary and loaded.get_config()["arch"] == arch


def test_tied_model_has_one_mask_for_embedding_and_softmax():
    tied = ks.models.language_model("awd_lstm", tied=True, nlayers=2, **SMALL)
    untied = ks.models.language_model("awd_lstm", tied=False, nlayers=2, **SMALL)
    tied_names = [mw.name for mw in ks.sparsity.collect(tied)]
    assert len(tied_names) == len(ks.sparsity.collect(untied)) - 1
    assert sum("embedding" in n for n in tied_names) == 1
    ks.sparsity.initialize(tied, 0.5, seed=0)
    # The logits use the masked table itself: with the table's rows zeroed where masked.
    table = tied.embedding.embeddings.numpy()
    h = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    np.testing.assert_allclose(tied.embedding(h, reverse=True), h @ table.T + tied.embedding.bias.numpy(), atol=1e-5)
    total = sum(mw.size for mw in ks.sparsity.collect(tied))
    assert ks.sparsity.total_active(tied) == sum(round(0.5 * mw.size) for mw in ks.sparsity.collect(tied)) < total


def test_word_dropout_drops_whole_words_and_locked_dropout_shares_masks_over_time():
    embedding = ks.layers.MaskedEmbedding(50, 16, word_dropout=0.5, seed=1)
    ids = np.array([[3, 3, 3, 7, 7, 7]])
    out = embedding(ids, training=True).numpy()
    assert np.array_equal(out[0, 0], out[0, 1]) and np.array_equal(out[0, 3], out[0, 5])
    table = embedding.embeddings.numpy()
    for row, word in ((out[0, 0], 3), (out[0, 3], 7)):
        assert np.allclose(row, 0) or np.allclose(row, 2 * table[word])
    locked = ks.layers.LockedDropout(0.5, seed=0)(np.ones((2, 6, 5), "float32"), training=True).numpy()
    assert np.all(locked == locked[:, :1, :])


def test_bad_model_arguments_are_rejected():
    with pytest.raises(ValueError, match="Unknown arch 'gru'"):
        ks.models.language_model("gru")
    with pytest.raises(ValueError, match="tied weights need emsize == nhid"):
        ks.models.language_model("lstm", emsize=10, nhid=20, tied=True)
    with pytest.raises(ValueError, match="Unknown preset"):
        ks.models.preset("huge")


def test_presets_build_the_papers_configurations():
    lstm = ks.models.preset("lstm_ptb_2x1500")
    assert lstm["model"]["nhid"] == 1500 and lstm["train"]["density"] == 0.33 and lstm["train"]["death_rate"] == 0.8
    rhn = ks.models.preset("rhn_ptb_830")
    assert rhn["model"]["depth"] == 10 and rhn["train"]["density"] == 0.472 and rhn["train"]["seed"] == 42
    model = ks.models.LanguageModel(vocab_size=100, **{**rhn["model"], "emsize": 16, "nhid": 16, "depth": 2})
    model(np.zeros((1, 3), "int32"))
    assert len(ks.sparsity.collect(model)) == 1 + 1 + 2  # tied table, input kernel, 2 recurrent kernels

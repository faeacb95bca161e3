"""Block masks through plain `model.fit` with every topology callback, SNT-ASGD, a resume and a tied table."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity.initialize import random_mask
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import TIED_BLOCK
from tests.callbacks.lm import TIED_VOCAB
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import fit_with_selfish_rnn
from tests.callbacks.lm import tied_block_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens

BLOCK = 3  # the tiny LM's inputs (and embedding features) are 8 wide: two full blocks and a partial one of 2
MASKED = 6  # the embedding table (blocked along its features) and 5 kernels


def block_lm(density=0.3, seed=0):
    model = tiny_lm(density=1.0)
    ks.sparsity.initialize(model, density, seed=seed, block_size=BLOCK)
    return model


def block_states(mw):
    """Active state of every block of `mw`'s mask, asserting every block is whole."""
    mask = mw.mask.numpy() != 0
    assert mw.blocks.is_whole(mask), f"{mw.name}: a block is partly active"
    return mw.blocks.of_mask(mask)


def block_counts(mw, gate_wise):
    states = block_states(mw)
    return [int(g.sum()) for g in mw.split_gates(states)] if gate_wise else [int(states.sum())]


class BlockRecorder(keras.callbacks.Callback):
    """Per batch end: the active blocks of every kernel (per gate), and the largest |w| off the mask."""

    def __init__(self, gate_wise=False):
        super().__init__()
        self.gate_wise, self.counts, self.worst = gate_wise, [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        kernels = [mw for mw in ks.sparsity.collect(self.model) if mw.block_size > 1]
        self.counts.append([block_counts(mw, self.gate_wise) for mw in kernels])
        for mw in kernels:
            self.worst = max(self.worst, float(np.abs(mw.variable.numpy()[mw.mask.numpy() == 0]).max(initial=0)))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"redistribution": "gate_wise"}, {"drop": "set"}, {"grow": "momentum"}, {"grow": "gradient"}],
    ids=["selfish_rnn", "gate_wise", "set", "snfs", "rigl"],
)
def test_drop_and_grow_keeps_whole_blocks_at_exact_block_counts_in_fit(kwargs):
    x, y = tokens(batches=6)
    model = compile_lm(block_lm())
    if kwargs.get("grow") == "gradient":
        kwargs = {**kwargs, "data": [(x[:BATCH], y[:BATCH])]}
    callback = ks.callbacks.DropAndGrow(drop_fraction=0.5, schedule="constant", update_every=2, seed=0, verbose=0, **kwargs)
    recorder = BlockRecorder(gate_wise=kwargs.get("redistribution") == "gate_wise")
    before = [mw.mask.numpy().copy() for mw in ks.sparsity.collect(model)]
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback, recorder], verbose=0)
    assert [r["step"] for r in callback.history] == [2, 4, 6]
    assert all(counts == recorder.counts[0] for counts in recorder.counts)
    assert recorder.worst == 0.0
    kernels = [mw for mw in ks.sparsity.collect(model) if mw.block_size == BLOCK]
    assert len(kernels) == MASKED
    assert any(not np.array_equal(mw.mask.numpy(), b) for mw, b in zip(ks.sparsity.collect(model), before))
    record = callback.history[0]["weights"][kernels[0].name]
    assert record["dropped"] > 0


@pytest.mark.parametrize("kwargs", [{}, {"drop": "set"}], ids=["compiled", "numpy"])
def test_the_same_seed_gives_the_same_block_masks(kwargs):
    x, y = tokens(batches=4)
    masks = []
    for _ in range(2):
        keras.utils.set_random_seed(0)  # the same initial weights and dropout
        model = compile_lm(block_lm(seed=2))
        callback = ks.callbacks.DropAndGrow(update_every=2, seed=7, verbose=0, **kwargs)
        model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], shuffle=False, verbose=0)
        masks.append([mw.mask.numpy() for mw in ks.sparsity.collect(model)])
    for a, b in zip(*masks):
        np.testing.assert_array_equal(a, b)


def test_gradual_magnitude_pruning_prunes_whole_blocks_to_the_target():
    x, y = tokens(batches=6)
    model = compile_lm(block_lm(density=1.0))
    callback = ks.callbacks.GradualMagnitudePruning(0.5, frequency=2, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)
    for mw in ks.sparsity.collect(model):
        states = block_states(mw)
        assert int(states.sum()) == round(0.5 * mw.blocks.count)


def test_snt_asgd_with_block_masks_averages_and_keeps_blocks():
    x, y = tokens(batches=6)
    model = compile_lm(block_lm(), ks.optimizers.SNTASGD(1.0, global_clipnorm=0.25))
    recorder = BlockRecorder()
    callback = ks.callbacks.SelfishRNN(drop_fraction=0.5, update_every=2, seed=0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback, recorder], verbose=0)
    model.optimizer.start_averaging()
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback, recorder], verbose=0)
    assert len(callback.history) == 6 and model.optimizer.averaging
    assert all(counts == recorder.counts[0] for counts in recorder.counts) and recorder.worst == 0.0
    with ks.optimizers.averaged_weights(model):
        for mw in ks.sparsity.collect(model):
            block_states(mw)
            np.testing.assert_array_equal(mw.variable.numpy()[mw.mask.numpy() == 0], 0.0)


def test_a_resumed_run_keeps_the_block_size_of_its_checkpoint(tmp_path):
    x, y = tokens(batches=4)
    model = compile_lm(block_lm())
    callback = ks.callbacks.SelfishRNN(update_every=2, seed=0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 1, "batch": 0, "step": 4}, stateful={"topology": callback})
    counts = [block_counts(mw, False) for mw in ks.sparsity.collect(model) if mw.block_size > 1]

    fresh = compile_lm(tiny_lm(seed=5))  # unstructured masks, block size 1, until restored
    fresh_callback = ks.callbacks.SelfishRNN(update_every=2, seed=0, verbose=0)
    ks.callbacks.read_checkpoint(tmp_path, fresh, stateful={"topology": fresh_callback})
    fresh.fit(x, y, batch_size=BATCH, epochs=2, initial_epoch=1, callbacks=[fresh_callback], verbose=0)
    assert len(fresh_callback.history) == 4
    kernels = [mw for mw in ks.sparsity.collect(fresh) if mw.block_size > 1]
    assert [mw.block_size for mw in kernels] == [BLOCK] * MASKED
    assert [block_counts(mw, False) for mw in kernels] == counts


def test_a_mask_that_is_not_made_of_whole_blocks_is_refused_at_train_begin():
    x, y = tokens(batches=2)
    model = compile_lm(block_lm())
    mw = ks.sparsity.collect(model)[1]
    mask = mw.mask.numpy()
    mask[0, np.flatnonzero(mask[0])[0]] = 0.0
    mw.mask.assign(mask)
    with pytest.raises(ValueError, match="not made of whole blocks of 3 inputs"):
        model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[ks.callbacks.SelfishRNN(verbose=0)], verbose=0)


def test_a_table_saved_unstructured_stays_unstructured_on_resume(tmp_path):
    # Checkpoints written before embedding tables took blocks hold them unstructured.
    x, y = tokens(batches=4)
    model = compile_lm(block_lm())
    table = ks.sparsity.collect(model)[0]
    table.mask.assign(random_mask(table.shape, 100, np.random.default_rng(0)))
    table.use_blocks(1)
    ks.sparsity.apply_masks(model)
    callback = ks.callbacks.SelfishRNN(update_every=2, seed=0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 1, "batch": 0, "step": 4}, stateful={"topology": callback})

    fresh = compile_lm(block_lm(seed=5))  # a table of blocks, until restored
    fresh_callback = ks.callbacks.SelfishRNN(update_every=2, seed=0, verbose=0)
    ks.callbacks.read_checkpoint(tmp_path, fresh, stateful={"topology": fresh_callback})
    fresh.fit(x, y, batch_size=BATCH, epochs=2, initial_epoch=1, callbacks=[fresh_callback], verbose=0)
    assert [mw.block_size for mw in ks.sparsity.collect(fresh)] == [1] + [BLOCK] * (MASKED - 1)
    assert int(ks.sparsity.collect(fresh)[0].mask.numpy().sum()) == 100


def test_a_tied_lm_keeps_whole_blocks_of_features_in_its_table_through_fit():
    model = tied_block_lm()
    recorder = BlockRecorder()
    callback = fit_with_selfish_rnn(model, [recorder])
    table = ks.sparsity.collect(model)[0]
    assert table.variable is model.embedding.embeddings and model.decoder is None  # one matrix: embedding and softmax
    assert (table.block_axis, table.block_size, table.blocks.grid) == (1, TIED_BLOCK, (TIED_VOCAB, 2))  # 20 features: 16 + 4
    assert [r["step"] for r in callback.history] == [2, 4, 6]
    assert sum(r["weights"][table.name]["dropped"] for r in callback.history) > 0
    assert len(recorder.counts) == 6 and all(counts == recorder.counts[0] for counts in recorder.counts)  # per batch, every matrix
    assert recorder.worst == 0.0
    states = block_states(table)
    assert int(states.sum()) == round(0.3 * table.blocks.count)

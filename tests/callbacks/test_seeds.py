"""DropAndGrow(seed=None): the drawn seed is saved with the state and shared under tf.distribute."""

import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish.callbacks.drop_and_grow import chief_seed
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens
from tests.conftest import run_process


def masks(model):
    return [mw.mask.numpy().copy() for mw in ks.sparsity.collect(model)]


@pytest.mark.parametrize("update_every", ["epoch", 3])
def test_resumed_run_with_seed_none_reproduces_the_uninterrupted_masks(update_every):
    x, y = tokens(batches=6)
    kwargs = dict(drop_fraction=0.5, update_every=update_every, end_step=18, verbose=0)  # 3 epochs of 6 steps
    interrupted, uninterrupted = compile_lm(tiny_lm()), compile_lm(tiny_lm())
    uninterrupted.set_weights(interrupted.get_weights())  # the same starting point
    before = ks.callbacks.DropAndGrow(**kwargs)  # seed=None: drawn now
    interrupted.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[before], verbose=0)
    after = ks.callbacks.DropAndGrow(**kwargs)  # a new object, with another drawn seed
    assert after.seed != before.seed
    after.set_state(before.get_state())
    interrupted.fit(x, y, batch_size=BATCH, epochs=3, initial_epoch=1, shuffle=False, callbacks=[after], verbose=0)

    once = ks.callbacks.DropAndGrow(seed=before.seed, **kwargs)
    uninterrupted.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, callbacks=[once], verbose=0)
    assert [r["step"] for r in once.history] == [r["step"] for r in after.history] and len(once.history) > 2
    for resumed, reference in zip(masks(interrupted), masks(uninterrupted)):
        np.testing.assert_array_equal(resumed, reference)


def test_seed_round_trips_through_a_checkpoint(tmp_path):
    model = compile_lm(tiny_lm())
    model.optimizer.build(model.trainable_variables)
    saved = ks.callbacks.DropAndGrow(verbose=0)
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 0, "step": 0}, {"topology": saved})
    restored = ks.callbacks.DropAndGrow(verbose=0)
    ks.callbacks.read_checkpoint(tmp_path, model, {"topology": restored})
    assert restored.seed == saved.seed


def test_state_without_a_seed_keeps_the_callbacks_own():
    callback = ks.callbacks.DropAndGrow(seed=5, verbose=0)
    state = callback.get_state()
    del state["seed"]
    callback.set_state(state)
    assert callback.seed == 5


def test_chief_seed_on_one_replica_is_the_seed_itself():
    strategy = tf.distribute.get_strategy()
    for seed in (0, 1, 2**21 - 1, 2**21, 2**63 - 1, 0x5DEECE66D12345):
        assert chief_seed(strategy, seed) == seed


def test_seed_none_is_broadcast_under_mirrored_strategy():
    result = run_process("tests.callbacks.seeded_mirrored")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broadcast from replica 0 and restored by set_state" in result.stdout

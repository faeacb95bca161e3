"""Checkpoints: exact restore of weights, masks, optimizer, RNN and callback state; atomicity; NaN."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import tokens


def stateful_lm(seed=0):
    keras.utils.set_random_seed(seed)
    model = ks.models.language_model("awd_lstm", 40, emsize=8, nhid=8, nlayers=2, dropouti=0.2, wdrop=0.2, batch_size=BATCH, seq_len=6, stateful=True)
    ks.sparsity.initialize(model, 0.4, seed=0)
    model.compile(ks.optimizers.SNTASGD(1.0, global_clipnorm=0.25), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model


def callbacks():
    return {
        "drop_and_grow": ks.callbacks.DropAndGrow(update_every=2, end_step=100, seed=0, verbose=0),
        "trigger": ks.callbacks.NonMonotonicTrigger(nonmono=1, monitor="loss", verbose=0),
        "best": ks.callbacks.BestWeights("unused.weights.h5"),
    }


def snapshot(model):
    variables = model.variables + model.optimizer.variables + ks.model_state.carried_variables(model)
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def test_restore_is_exact_for_weights_masks_optimizer_rnn_and_callback_state(tmp_path):
    x, y = tokens(batches=8)
    model, named = stateful_lm(), callbacks()
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=list(named.values())[:2], shuffle=False, verbose=0)
    model.optimizer.start_averaging()
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=list(named.values())[:2], shuffle=False, verbose=0)
    assert named["drop_and_grow"].history and named["trigger"].values
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 4, "batch": 3, "step": 32}, stateful=named)
    saved, saved_states = snapshot(model), {k: v.get_state() for k, v in named.items()}

    fresh, fresh_named = stateful_lm(seed=5), callbacks()
    assert ks.callbacks.read_checkpoint(tmp_path, fresh, stateful=fresh_named) == {"epoch": 4, "batch": 3, "step": 32}
    restored = snapshot(fresh)
    assert len(restored) == len(saved)
    for a, b in zip(restored, saved):
        np.testing.assert_array_equal(a, b)
    assert fresh.optimizer.averaging
    for key, state in saved_states.items():
        again = fresh_named[key].get_state()
        for field, value in state.items():
            if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                assert all(np.array_equal(p, q) for p, q in zip(value, again[field]))
            else:
                assert again[field] == value


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = stateful_lm()
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 1, "step": 1})
    before = snapshot(model)
    for mw in ks.sparsity.collect(model):
        mw.mask.assign(np.zeros(mw.shape, "float32"))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 2, "step": 2})
    monkeypatch.undo()
    fresh = stateful_lm(seed=3)
    assert ks.callbacks.read_checkpoint(tmp_path, fresh)["step"] == 1
    for a, b in zip(snapshot(fresh), before):
        np.testing.assert_array_equal(a, b)


class StopAtBatch(keras.callbacks.Callback):
    """Stops training at batch `batch` (0-based) of the first epoch, whatever the loss."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.stop_training = True


def poisoned(model):
    """Make every later loss NaN (a NaN decoder bias reaches every logit)."""
    model.decoder.bias.assign(np.full(model.decoder.bias.shape, np.nan, "float32"))


def test_checkpoints_rotate_and_nan_stops_training_without_saving(tmp_path):
    x, y = tokens(batches=8)
    model = stateful_lm()
    saver = ks.callbacks.Checkpoint(tmp_path, every_steps=3, keep=2)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[saver], shuffle=False, verbose=0)
    assert len(list(tmp_path.glob("ckpt-*"))) == 2
    assert (tmp_path / "latest").read_text().endswith("-1-0")  # epoch 1, batch 0: after the epoch
    latest = (tmp_path / "latest").read_text()
    poisoned(model)
    stop = ks.callbacks.StopOnNaN()
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[stop, saver], shuffle=False, verbose=0)
    assert stop.bad_step == 8 + 1  # the first step of the second fit
    assert (tmp_path / "latest").read_text() == latest


def test_a_non_finite_loss_is_never_checkpointed_even_when_training_goes_on(tmp_path):
    # No StopOnNaN: Checkpoint's own loss check is all that keeps the NaN weights out.
    x, y = tokens(batches=8)
    model = stateful_lm()
    saver = ks.callbacks.Checkpoint(tmp_path, every_steps=2)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[saver], shuffle=False, verbose=0)
    latest = (tmp_path / "latest").read_text()
    poisoned(model)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[saver], shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert (tmp_path / "latest").read_text() == latest


def test_no_checkpoint_once_a_callback_stopped_training_even_with_a_finite_loss(tmp_path):
    # The loss is finite throughout: only the stop decision keeps the last batch and epoch end out.
    x, y = tokens(batches=8)
    model = stateful_lm()
    saver = ks.callbacks.Checkpoint(tmp_path, every_steps=1, keep=3)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[StopAtBatch(4), saver], shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert (tmp_path / "latest").read_text() == "ckpt-000000004-0-4"  # batches 1-4 of epoch 0, not the fifth


def test_step_checkpoints_land_on_every_multiple_and_read_the_step_only_when_one_can_be_due(tmp_path, monkeypatch):
    # 3 batches per epoch, a checkpoint every 4 steps: the multiples fall in other
    # epochs' middles (steps 4, 8, 12), the epoch ends after steps 3, 6, 9, 12.
    from keras_selfish.callbacks import checkpoint

    reads = []
    monkeypatch.setattr(checkpoint, "optimizer_step", lambda model: reads.append(1) or ks.model_state.optimizer_step(model))
    x, y = tokens(batches=3)
    model = stateful_lm()
    saver = ks.callbacks.Checkpoint(tmp_path, every_steps=4, keep=100)
    model.fit(x, y, batch_size=BATCH, epochs=4, callbacks=[saver], shuffle=False, verbose=0)
    names = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    steps = [(int(n.split("-")[1]), n.split("-", 2)[2]) for n in names]
    assert steps == [(3, "1-0"), (4, "1-1"), (6, "2-0"), (8, "2-2"), (9, "3-0"), (12, "3-3"), (12, "4-0")]
    # One read at the start, one at each of the 3 batch ends where a multiple can be
    # due, one per checkpoint written (7): not one at each of the 12 batch ends.
    assert len(reads) == 1 + 3 + 7

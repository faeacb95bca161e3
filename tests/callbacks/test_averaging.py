"""NonMonotonicTrigger's rule, and SNT-ASGD + trigger + SelfishRNN in one fit."""

import json

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.keras_private import variable_index
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


def expected_switch(values, nonmono):
    """The rule written out: first epoch e (0-based) with e > nonmono and values[e] > min(values[:e - nonmono])."""
    for epoch in range(len(values)):
        if epoch > nonmono and values[epoch] > min(values[: epoch - nonmono]):
            return epoch
    return None


@pytest.fixture(scope="module")
def built_model():
    model = compile_lm(tiny_lm(layers=1), ks.optimizers.SNTASGD(1.0))
    x, y = tokens(batches=1)
    model.train_on_batch(x, y)
    return model


@hypothesis.given(st.lists(st.integers(0, 6), min_size=1, max_size=14), st.integers(1, 4))
@hypothesis.settings(deadline=None, max_examples=200)
def test_switch_happens_exactly_when_the_rule_says_and_once(built_model, values, nonmono):
    built_model.optimizer._averaging.assign(0)
    trigger = ks.callbacks.NonMonotonicTrigger(nonmono=nonmono, monitor="val_loss", verbose=0)
    trigger.set_model(built_model)
    trigger.on_train_begin()
    flags = []
    for epoch, value in enumerate(values):
        logs = {"val_loss": float(value)}
        trigger.on_epoch_end(epoch, logs)
        flags.append(logs["averaging"])
    switch = expected_switch(values, nonmono)
    assert trigger.switch_epoch == switch
    assert built_model.optimizer.averaging == (switch is not None)
    assert flags == [float(switch is not None and e >= switch) for e in range(len(values))]
    if switch is not None:
        assert switch >= nonmono + 1  # epoch nonmono + 2, counting from 1


def test_paper_example_switches_at_epoch_seven(built_model):
    built_model.optimizer._averaging.assign(0)
    trigger = ks.callbacks.NonMonotonicTrigger(verbose=0)
    trigger.set_model(built_model)
    trigger.on_train_begin()
    # Improves for 6 epochs; the 7th is worse than the best before the last 5 (epoch 1: 5.0).
    for epoch, value in enumerate([5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 5.5, 3.0]):
        trigger.on_epoch_end(epoch, {"val_loss": value})
    assert trigger.switch_epoch == 6


def test_state_round_trips_through_the_state_file(built_model, tmp_path):
    built_model.optimizer._averaging.assign(0)
    path = tmp_path / "trigger.json"
    first = ks.callbacks.NonMonotonicTrigger(nonmono=1, state_path=path, verbose=0)
    first.set_model(built_model)
    first.on_train_begin()
    for epoch, value in enumerate([3.0, 2.0, 1.5, 3.5]):
        first.on_epoch_end(epoch, {"val_loss": value})
    assert json.loads(path.read_text()) == {"values": [3.0, 2.0, 1.5, 3.5], "switched": True, "switch_epoch": 3}
    resumed = ks.callbacks.NonMonotonicTrigger(nonmono=1, state_path=path, verbose=0)
    resumed.set_model(built_model)
    resumed.on_train_begin()
    assert resumed.get_state() == first.get_state()


def test_bad_trigger_input_is_rejected(built_model):
    with pytest.raises(ValueError, match="nonmono must be an integer >= 1"):
        ks.callbacks.NonMonotonicTrigger(nonmono=0)
    trigger = ks.callbacks.NonMonotonicTrigger(monitor="val_perplexity", verbose=0)
    trigger.set_model(built_model)
    trigger.on_train_begin()
    with pytest.raises(ValueError, match="'val_perplexity', which is not in the epoch logs"):
        trigger.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    sgd_model = compile_lm(tiny_lm(layers=1), keras.optimizers.SGD(1.0))
    trigger.set_model(sgd_model)
    with pytest.raises(ValueError, match="works with ks.optimizers.SNTASGD"):
        trigger.on_train_begin()


class ScriptedValue(keras.callbacks.Callback):
    """Writes a scripted 'signal' value into the epoch logs, so the switch epoch is known."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["signal"] = self.values[epoch]


class Probe(keras.callbacks.Callback):
    """Checks the sparse invariants after every step and what evaluation runs on."""

    def __init__(self):
        super().__init__()
        self.evaluated_on_averages = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        for mw in ks.sparsity.collect(self.model):
            inactive = mw.mask.numpy() == 0
            assert np.all(mw.variable.numpy()[inactive] == 0)
            average = optimizer._averages[variable_index(optimizer, mw.variable)]
            assert np.all(average.numpy()[inactive] == 0)

    def on_test_batch_begin(self, batch, logs=None):
        if batch == 0:
            pairs = self.model.optimizer.averages()
            self.evaluated_on_averages.append(all(np.array_equal(v.numpy(), a.numpy()) for v, a in pairs))


def test_fit_with_sntasgd_trigger_selfish_rnn_and_averaged_evaluation():
    x, y = tokens(batches=6)
    vx, vy = tokens(batches=2, seed=1)
    model = compile_lm(tiny_lm(), ks.optimizers.SNTASGD(2.0, weight_decay=1e-4, global_clipnorm=0.25))
    probe = Probe()
    callbacks = [
        ks.callbacks.SelfishRNN(seed=0, verbose=0),
        ScriptedValue([3.0, 2.0, 1.5, 2.5, 1.0, 0.9]),
        ks.callbacks.NonMonotonicTrigger(nonmono=1, monitor="signal", verbose=0),
        ks.callbacks.SwapAveragedWeights(),
        probe,
    ]
    history = model.fit(x, y, batch_size=BATCH, epochs=6, validation_data=(vx, vy), callbacks=callbacks, verbose=0)
    # 2.5 > min(3.0, 2.0): the switch is at the 4th epoch (index 3).
    assert history.history["averaging"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert model.optimizer.averaging_start == 4 * 6
    # Validation used the raw weights through epoch 4 and the averages afterwards.
    assert probe.evaluated_on_averages == [False, False, False, False, True, True]
    assert np.isfinite(history.history["val_loss"]).all()
    with ks.optimizers.averaged_weights(model):
        averaged = model.evaluate(vx, vy, batch_size=BATCH, verbose=0)
    assert averaged == model.evaluate(vx, vy, batch_size=BATCH, callbacks=[ks.callbacks.SwapAveragedWeights()], verbose=0)
    assert averaged != model.evaluate(vx, vy, batch_size=BATCH, verbose=0)

"""Checkpoints under damage and crashes (fallback, stale temporaries, fsync), step counting, bad
arguments; and the callback order: Checkpoint keeps the raw weights, BestWeights the scored ones."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_selfish as ks
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


def averaging_lm(seed=0):
    """A tiny sparse LM on SNT-ASGD with averaging switched on from the first step."""
    keras.utils.set_random_seed(seed)
    model = compile_lm(tiny_lm(seed=seed), ks.optimizers.SNTASGD(1.0))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.start_averaging()
    return model


def values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def state_of(model):
    return values(model.weights + model.optimizer.variables)


def assert_all_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


def perturb(model):
    for variable in model.trainable_variables:
        variable.assign(variable + 0.5)


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- Fallback to the previous checkpoint -------------------------------------------------------


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path):
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": lambda c: truncate(c / "model.weights.h5"),
    "garbled weights": lambda c: garble(c / "model.weights.h5"),
    "truncated arrays": lambda c: truncate(c / "arrays.npz"),
    "corrupt state json": lambda c: (c / "state.json").write_text('{"position": {"epoch"'),
    "missing weights": lambda c: (c / "model.weights.h5").unlink(),
    "missing directory": shutil.rmtree,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    model = averaging_lm()
    previous = ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 2, "step": 2})
    saved = state_of(model)
    perturb(model)
    latest = ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 4, "step": 4})
    assert (tmp_path / "latest").read_text() == latest.name
    DAMAGE[damage](latest)

    fresh = averaging_lm(seed=7)
    with pytest.warns(UserWarning, match=f"Unreadable checkpoint {latest.name}.*resumed from {previous.name}"):
        position = ks.callbacks.read_checkpoint(tmp_path, fresh)
    assert position == {"epoch": 0, "batch": 2, "step": 2}
    assert_all_equal(state_of(fresh), saved)

    # The resumed run's next checkpoint replaces the damaged one ahead of it.
    third = ks.callbacks.write_checkpoint(tmp_path, fresh, {"epoch": 0, "batch": 3, "step": 3})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [previous.name, third.name]


def test_with_no_readable_checkpoint_read_names_each_and_raises(tmp_path):
    model = averaging_lm()
    only = ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 1, "batch": 0, "step": 5}, keep=1)
    truncate(only / "model.weights.h5")
    with pytest.raises(ValueError, match=f"No checkpoint in .* could be restored.*{only.name}"):
        ks.callbacks.read_checkpoint(tmp_path, averaging_lm(seed=3))


# --- Temporaries of killed processes -------------------------------------------------------------


def test_temporaries_of_dead_processes_are_removed_on_write_and_on_read(tmp_path):
    model = averaging_lm()
    dead, alive = dead_pid(), os.getppid()

    def leave_temporaries():
        stale = tmp_path / f".ckpt-000000009-0-9.tmp{dead}"
        stale.mkdir()
        (stale / "model.weights.h5").write_bytes(b"x" * 1000)
        (tmp_path / f".latest.tmp{dead}").write_text("ckpt-000000009-0-9")
        live = tmp_path / f".ckpt-000000011-0-11.tmp{alive}"
        live.mkdir(exist_ok=True)
        return [stale, tmp_path / f".latest.tmp{dead}"], live

    stale, live = leave_temporaries()
    ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 1, "step": 1})
    assert not any(p.exists() for p in stale)
    assert live.is_dir()  # another live process may be writing it

    stale, live = leave_temporaries()
    assert ks.callbacks.read_checkpoint(tmp_path, averaging_lm(seed=1))["step"] == 1
    assert not any(p.exists() for p in stale)
    assert live.is_dir()


# --- fsync ---------------------------------------------------------------------------------------


@pytest.fixture
def fsynced(monkeypatch):
    """The paths passed to os.fsync, in order."""
    paths, real = [], os.fsync

    def record(descriptor):
        paths.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    return paths


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps descriptors to paths through /proc")
def test_checkpoint_files_directory_and_pointer_are_fsynced(tmp_path, fsynced):
    model = averaging_lm()
    final = ks.callbacks.write_checkpoint(tmp_path, model, {"epoch": 0, "batch": 1, "step": 1})
    temporary = tmp_path / f".{final.name}.tmp{os.getpid()}"
    files = sorted(str(temporary / f) for f in ("arrays.npz", "model.weights.h5", "state.json"))
    pointer = tmp_path / f".latest.tmp{os.getpid()}"
    assert sorted(fsynced[:3]) == files
    assert fsynced[3:] == [str(temporary), str(tmp_path), str(pointer), str(tmp_path)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps descriptors to paths through /proc")
def test_best_weights_and_trigger_state_are_written_atomically_with_fsync(tmp_path, fsynced):
    model = averaging_lm()
    best = ks.callbacks.BestWeights(tmp_path / "best.weights.h5", monitor="loss")
    best.set_model(model)
    best.on_epoch_end(0, {"loss": 1.0})
    trigger = ks.callbacks.NonMonotonicTrigger(nonmono=1, monitor="loss", state_path=tmp_path / "trigger.json", verbose=0)
    trigger.set_model(model)
    trigger.on_epoch_end(0, {"loss": 1.0})
    pid = os.getpid()
    assert fsynced == [str(tmp_path / f".best.tmp{pid}.weights.h5"), str(tmp_path), str(tmp_path / f".trigger.tmp{pid}.json"), str(tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5", "trigger.json"]
    assert json.loads((tmp_path / "trigger.json").read_text())["values"] == [1.0]


# --- Step counting and arguments -----------------------------------------------------------------


def test_every_steps_counts_optimizer_steps_with_steps_per_execution(tmp_path):
    x, y = tokens(batches=12)
    model = compile_lm(tiny_lm(), steps_per_execution=3)
    saver = ks.callbacks.Checkpoint(tmp_path, every_steps=4, keep=100)
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[saver], shuffle=False, verbose=0)
    # Batch ends come at steps 3, 6, 9, ...; a checkpoint at the first one at or past
    # each multiple of 4 (4 -> 6, 8 -> 9, 12 -> 12, 16 -> 18, ...), plus the epoch ends.
    written = sorted(tuple(int(n) for n in p.name.split("-")[1:]) for p in tmp_path.glob("ckpt-*"))
    assert written == [(6, 0, 6), (9, 0, 9), (12, 0, 12), (12, 1, 0), (18, 1, 6), (21, 1, 9), (24, 1, 12), (24, 2, 0)]


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, "2"])
def test_bad_keep_is_rejected(tmp_path, keep):
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        ks.callbacks.Checkpoint(tmp_path, keep=keep)
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        ks.callbacks.write_checkpoint(tmp_path, None, {"epoch": 0, "batch": 0, "step": 0}, keep=keep)


@pytest.mark.parametrize("every_steps", [0, -3, 2.0, True, "100"])
def test_bad_every_steps_is_rejected(tmp_path, every_steps):
    with pytest.raises(ValueError, match="every_steps must be None .* or an integer >= 1"):
        ks.callbacks.Checkpoint(tmp_path, every_steps=every_steps)


# --- Callback order: the README's list ------------------------------------------------------------


def readme_order(*after):
    """DropAndGrow, NonMonotonicTrigger, SwapAveragedWeights, then the rest (the README's order)."""
    return [
        ks.callbacks.DropAndGrow(end_step=1000, seed=0, verbose=0),
        ks.callbacks.NonMonotonicTrigger(nonmono=5, monitor="val_loss", verbose=0),
        *after,
    ]


def test_a_checkpoint_after_swap_on_epoch_holds_the_raw_weights(tmp_path):
    x, y = tokens(batches=4)
    vx, vy = tokens(batches=1, seed=1)
    model = averaging_lm()
    callbacks = readme_order(ks.callbacks.SwapAveragedWeights(swap_on_epoch=True), ks.callbacks.Checkpoint(tmp_path))
    model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(vx, vy), callbacks=callbacks, shuffle=False, verbose=0)
    raw, averages = values(model.trainable_variables), values(a for _, a in model.optimizer.averages())
    assert not all(np.array_equal(r, a) for r, a in zip(raw, averages))

    resumed = averaging_lm(seed=4)
    assert ks.callbacks.read_checkpoint(tmp_path, resumed) == {"epoch": 2, "batch": 0, "step": 8}
    assert_all_equal(state_of(resumed), state_of(model))  # raw weights, masks, averages


def test_a_topology_update_while_the_averages_are_in_keeps_inactive_raw_weights_zero(tmp_path):
    x, y = tokens(batches=4)
    model = averaging_lm()
    callbacks = [ks.callbacks.SwapAveragedWeights(swap_on_epoch=True), ks.callbacks.DropAndGrow(end_step=1000, seed=0, verbose=0)]
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=callbacks, shuffle=False, verbose=0)
    assert callbacks[1].history
    for mw in ks.sparsity.collect(model):
        assert np.all(mw.variable.numpy()[mw.mask.numpy() == 0] == 0)


class ScoredWeights(keras.callbacks.Callback):
    """Records, per epoch, every model weight (masks included) the validation run scores."""

    def __init__(self):
        super().__init__()
        self.scored = {}
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.scored[self._epoch] = values(self.model.weights)


def test_best_weights_after_drop_and_grow_hold_the_scored_pre_update_weights(tmp_path):
    x, y = tokens(batches=4)
    vx, vy = tokens(batches=1, seed=1)
    model = averaging_lm()
    probe, best = ScoredWeights(), ks.callbacks.BestWeights(tmp_path / "best.weights.h5")
    callbacks = readme_order(ks.callbacks.SwapAveragedWeights(), probe, best)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(vx, vy), callbacks=callbacks, shuffle=False, verbose=0)
    assert best.best == min(history.history["val_loss"])
    scored = probe.scored[best.best_epoch]

    saved = averaging_lm(seed=9)
    saved.load_weights(tmp_path / "best.weights.h5")
    assert_all_equal(values(saved.weights), scored)
    masks = [i for i, v in enumerate(model.weights) if v.path.endswith("_mask")]
    assert masks and any(not np.array_equal(scored[i], model.weights[i].numpy()) for i in masks)  # the update came after

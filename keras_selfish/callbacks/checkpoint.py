"""Atomic, resumable training checkpoints; stopping on a non-finite loss; best weights."""

import json
import math
import pathlib
import shutil
import warnings

import keras
import numpy as np

from keras_selfish.files import atomic_write
from keras_selfish.files import remove_stale_temporaries
from keras_selfish import distribution
from keras_selfish.model_state import assign_carried
from keras_selfish.model_state import carried_values
from keras_selfish.model_state import carried_variables
from keras_selfish.model_state import optimizer_step
from keras_selfish.optimizers.averaged import averaged_weights
from keras_selfish.optimizers.averaged import raw_weights

LATEST = "latest"
WEIGHTS, ARRAYS, STATE = "model.weights.h5", "arrays.npz", "state.json"


def _split_state(state):
    """`(json_part, arrays)` of a callback state: numpy arrays (or lists of them) go to npz."""
    json_part, arrays = {}, {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            json_part[key] = {"__arrays__": len(value)}
            arrays.update({f"{key}/{i}": v for i, v in enumerate(value)})
        else:
            json_part[key] = value
    return json_part, arrays


def _join_state(json_part, arrays):
    state = {}
    for key, value in json_part.items():
        if isinstance(value, dict) and "__arrays__" in value:
            state[key] = [arrays[f"{key}/{i}"] for i in range(value["__arrays__"])]
        else:
            state[key] = value
    state.update({k: v for k, v in arrays.items() if "/" not in k})
    return state


def _check_keep(keep):
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(
            f"keep must be an integer >= 1 (how many checkpoints to keep), got {keep!r}. "
            f"keep=2 (the default) leaves a previous checkpoint to fall back to."
        )
    return keep


def _position_key(path):
    """`(step, epoch, batch)` of a `ckpt-<step>-<epoch>-<batch>` directory, for ordering."""
    return tuple(int(part) for part in path.name.split("-")[1:])


def _checkpoints(directory):
    """The checkpoint directories of `directory`, newest (highest position) first."""
    return sorted((p for p in directory.glob("ckpt-*-*-*") if p.is_dir()), key=_position_key, reverse=True)


def write_checkpoint(directory, model, position, stateful=None, keep=2):
    """Write one checkpoint atomically and point `latest` at it.

    The checkpoint is a directory `ckpt-<step>-<epoch>-<batch>` with the model's
    weights (including masks and optimizer state: averages, counters, averaging
    flag), the carried RNN states and dropout seeds, `position` and the state of
    every object in `stateful` (callbacks with `get_state`). The weights saved are
    the raw training weights, also while `SwapAveragedWeights` holds the averages
    in. Every file is fsynced in a temporary directory, which is renamed; `latest`
    is then replaced the same way (`ks.files.atomic_write`), so a crash or power
    loss at any moment leaves the previous checkpoint intact.

    Afterwards the `keep` newest checkpoints are kept, checkpoints ahead of this one
    (left by a run that resumed from an earlier one) are removed, and so are the
    temporaries of killed processes (`ks.files.remove_stale_temporaries`).

    Args:
        directory: checkpoint directory (created if needed).
        model: the compiled model.
        position: JSON-able dict `{"epoch", "batch", "step"}` (ints).
        stateful: dict name -> object with `get_state()`.
        keep: how many checkpoints to keep, >= 1 (1: no previous one to fall back to
            if the latest becomes unreadable).

    Returns:
        the checkpoint's path.
    """
    _check_keep(keep)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    name = f"ckpt-{position['step']:09d}-{position['epoch']}-{position['batch']}"

    def write(temporary):
        temporary.mkdir()
        with raw_weights(model):
            model.save_weights(temporary / WEIGHTS)
        arrays = {f"extra/{i}": v for i, v in enumerate(carried_values(model))}
        states = {}
        for key, obj in (stateful or {}).items():
            json_part, obj_arrays = _split_state(obj.get_state())
            states[key] = json_part
            arrays.update({f"{key}:{k}": v for k, v in obj_arrays.items()})
        np.savez(temporary / ARRAYS, **arrays)
        sizes = {f: (temporary / f).stat().st_size for f in (WEIGHTS, ARRAYS)}
        (temporary / STATE).write_text(json.dumps({"position": position, "states": states, "sizes": sizes}))

    final = atomic_write(directory / name, write)
    atomic_write(directory / LATEST, lambda temporary: temporary.write_text(name))
    newest = _position_key(final)
    older = [p for p in _checkpoints(directory) if _position_key(p) < newest]
    for old in [p for p in _checkpoints(directory) if _position_key(p) > newest] + older[keep - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load(path, model, stateful):
    """Restore checkpoint `path`: its JSON and arrays are read and checked before the weights load.

    A failure part-way may leave some weights loaded; `read_checkpoint` then loads
    the next candidate over them.
    """
    saved = json.loads((path / STATE).read_text())
    for file, size in saved.get("sizes", {}).items():
        actual = (path / file).stat().st_size
        if actual != size:
            raise ValueError(f"{file} has {actual} bytes, {size} were written")
    with np.load(path / ARRAYS) as npz:
        arrays = dict(npz)
    carried = carried_variables(model)
    values = [arrays[f"extra/{i}"] for i in range(len(carried))]
    states = {}
    for key in stateful:
        prefix = f"{key}:"
        states[key] = _join_state(saved["states"][key], {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
    model.load_weights(path / WEIGHTS)
    assign_carried(model, values)
    for key, obj in stateful.items():
        obj.set_state(states[key])
    return saved["position"]


def read_checkpoint(directory, model, stateful=None):
    """Restore the latest readable checkpoint of `directory` into `model` and `stateful`.

    Tries the checkpoint `latest` names, then the others, newest first: a
    checkpoint with a missing, truncated or corrupt file is skipped with a warning
    naming it (with the default `keep=2` there is a previous one to fall back to).
    Content damage that leaves every file readable at its written size is not
    detected. Also removes the temporaries of killed writers.

    Returns:
        the `position` dict of the checkpoint restored, or None when there is none.

    Raises:
        ValueError: checkpoints exist but none could be restored (e.g. the model
            does not match them); the message names each and why.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return None
    remove_stale_temporaries(directory)
    candidates = _checkpoints(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
    if not candidates:
        return None
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    stateful = stateful or {}
    failures = []
    for path in candidates:
        try:
            position = _load(path, model, stateful)
        except Exception as error:  # noqa: BLE001 -- any damage (OSError, BadZipFile, KeyError, JSON, h5py) means: try the next
            failures.append(f"{path.name} ({type(error).__name__}: {error})")
            continue
        if failures:
            warnings.warn(f"Unreadable checkpoint {'; '.join(failures)} in {directory}; resumed from {path.name} instead.", stacklevel=2)
        return position
    raise ValueError(
        f"No checkpoint in {directory} could be restored into this model: {'; '.join(failures)}. If the model or its "
        f"callbacks changed, use a new checkpoint directory; otherwise remove the damaged checkpoints."
    )


def finite(logs, key="loss"):
    return logs is None or key not in logs or math.isfinite(float(logs[key]))


class Checkpoint(keras.callbacks.Callback):
    """Resumable checkpoints at every epoch end and every `every_steps` optimizer steps.

    Records the position to resume from (`epoch`, `batch` within it, optimizer
    `step`); a checkpoint is never written when the loss is not finite. The step
    checkpoints follow the optimizer's step counter, so with `steps_per_execution=k`
    one is written at the first batch end at which the counter reached or passed a
    multiple of `every_steps`. The counter is read from the device only at the
    batch ends where it can have reached a multiple (it advances at most once per
    batch), not at every batch. Its place in the callback list does not matter for
    the weights: the raw (training) weights are saved even while
    `SwapAveragedWeights(swap_on_epoch=True)` holds the averages in. Put it after
    the callbacks whose state it saves, so their epoch-end state is included.

    Args:
        directory: checkpoint directory.
        every_steps: also checkpoint every this many optimizer steps, an int >= 1
            (None: epoch ends only).
        stateful: dict name -> callback with `get_state` / `set_state`.
        keep: checkpoints to keep, an int >= 1; with 1 there is no previous
            checkpoint for `read_checkpoint` to fall back to.
    """

    def __init__(self, directory, every_steps=None, stateful=None, keep=2):
        super().__init__()
        if every_steps is not None and (not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 1):
            raise ValueError(f"every_steps must be None (epoch ends only) or an integer >= 1 (optimizer steps), got {every_steps!r}.")
        self.directory = pathlib.Path(directory)
        self.every_steps = every_steps
        self.stateful = stateful or {}
        self.keep = _check_keep(keep)
        self.batch_offset = 0  # batches of the current epoch done before this fit call
        self._epoch = 0
        self._step = 0  # the optimizer step at the previous read
        self._bound = 0  # the highest the step can be now: the read plus the batches since
        self._batch = -1  # the batch of the epoch at the previous batch end

    def save(self, epoch, batch):
        step = optimizer_step(self.model)
        with distribution.write_path(self.directory, self.model.distribute_strategy) as directory:  # the chief's stays (TF's multi-worker convention)
            return write_checkpoint(directory, self.model, {"epoch": epoch, "batch": batch, "step": step}, self.stateful, self.keep)

    def on_train_begin(self, logs=None):
        self._step = self._bound = optimizer_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batch = epoch, -1

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_steps:
            return
        self._bound += batch - self._batch
        self._batch = batch
        if self._bound // self.every_steps == self._step // self.every_steps:
            return
        step, previous = optimizer_step(self.model), self._step
        self._step = self._bound = step
        if step // self.every_steps > previous // self.every_steps and finite(logs) and not self.model.stop_training:
            self.save(self._epoch, self.batch_offset + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        if finite(logs) and not self.model.stop_training:
            self.save(epoch + 1, 0)


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and remembers where.

    `self.bad_step` is the optimizer step with the bad loss (None if none).
    """

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        if not finite(logs):
            self.bad_step = optimizer_step(self.model)
            self.model.stop_training = True


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights with the lowest `monitor` (written atomically).

    Once SNT-ASGD averages, the averaged weights are saved (the ones validation
    scored with `SwapAveragedWeights`). For a validation monitor (`val_<name>`
    where the validation run logs `<name>`, e.g. "val_loss") the weights are taken
    when the validation run inside `fit` ends (`on_test_end`), before any
    epoch-end callback such as `DropAndGrow` changes the topology, so they are the
    weights and masks that were scored wherever this callback is in the list (the
    authors' code also saves before updating the topology). Other monitors (e.g.
    "loss", or "val_ppl" added by another callback) are read at the epoch end; put
    the callback before `DropAndGrow` for those.

    Args:
        path: a `.weights.h5` file (model weights, masks and optimizer state).
        monitor: epoch log to minimise.
        averaged: save SNT-ASGD's averaged weights once averaging has started
            (False: the raw training weights, even while `SwapAveragedWeights`
            holds the averages in).
    """

    def __init__(self, path, monitor="val_loss", averaged=True):
        super().__init__()
        self.path = pathlib.Path(path)
        self.monitor = monitor
        self.averaged = averaged
        self.best = math.inf
        self.best_epoch = None
        self._epoch = 0
        self._in_fit = False
        self._scored_epoch = None  # epoch whose validation run this callback already judged

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state):
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]

    def on_train_begin(self, logs=None):
        self._in_fit, self._scored_epoch = True, None

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_end(self, logs=None):
        name = self.monitor[len("val_") :] if self.monitor.startswith("val_") else None
        if self._in_fit and name is not None and name in (logs or {}):
            self._scored_epoch = self._epoch
            self._keep_if_best(logs[name], self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self._scored_epoch != epoch:
            self._keep_if_best((logs or {}).get(self.monitor, math.nan), epoch)

    def _keep_if_best(self, value, epoch):
        value = float(value)
        if math.isfinite(value) and value < self.best:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with distribution.write_path(self.path, self.model.distribute_strategy) as path:  # the chief's stays (TF's multi-worker convention)
                atomic_write(path, self._save)
            self.best, self.best_epoch = value, epoch

    def _save(self, temporary):
        with averaged_weights(self.model) if self.averaged else raw_weights(self.model):
            self.model.save_weights(temporary)

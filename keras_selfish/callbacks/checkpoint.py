"""Atomic, resumable training checkpoints; stopping on a non-finite loss; best weights."""

import json
import math
import os
import pathlib
import shutil

import keras
import numpy as np

from keras_selfish.model_state import carried_variables
from keras_selfish.model_state import optimizer_step
from keras_selfish.optimizers.averaged import averaged_weights

LATEST = "latest"


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


def write_checkpoint(directory, model, position, stateful=None, keep=2):
    """Write one checkpoint atomically and point `latest` at it.

    The checkpoint is a directory `ckpt-<step>-<epoch>-<batch>` with the model's
    weights (including masks and optimizer state: averages, counters, averaging
    flag), the carried RNN states and dropout seeds, `position` and the state of
    every object in `stateful` (callbacks with `get_state`). It is written under a
    temporary name and renamed; `latest` is replaced atomically afterwards, so a
    crash at any moment leaves the previous checkpoint intact.

    Args:
        directory: checkpoint directory (created if needed).
        model: the compiled model.
        position: JSON-able dict, e.g. `{"epoch", "batch", "step"}`.
        stateful: dict name -> object with `get_state()`.
        keep: how many checkpoints to keep.

    Returns:
        the checkpoint's path.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{position['step']:09d}-{position['epoch']}-{position['batch']}"
    final = directory / name
    temporary = directory / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    model.save_weights(temporary / "model.weights.h5")
    arrays = {f"extra/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(carried_variables(model))}
    states = {}
    for key, obj in (stateful or {}).items():
        json_part, obj_arrays = _split_state(obj.get_state())
        states[key] = json_part
        arrays.update({f"{key}:{k}": v for k, v in obj_arrays.items()})
    np.savez(temporary / "arrays.npz", **arrays)
    (temporary / "state.json").write_text(json.dumps({"position": position, "states": states}))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(temporary, final)
    pointer = directory / f".{LATEST}.tmp{os.getpid()}"
    pointer.write_text(name)
    os.replace(pointer, directory / LATEST)
    for old in sorted(p for p in directory.glob("ckpt-*") if p.name != name)[: -(keep - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(directory, model, stateful=None):
    """Restore the latest checkpoint of `directory` into `model` and `stateful`.

    Returns:
        the saved `position` dict, or None when there is no checkpoint.
    """
    directory = pathlib.Path(directory)
    if not (directory / LATEST).is_file():
        return None
    path = directory / (directory / LATEST).read_text().strip()
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path / "model.weights.h5")
    with np.load(path / "arrays.npz") as npz:
        arrays = dict(npz)
    for i, variable in enumerate(carried_variables(model)):
        variable.assign(arrays[f"extra/{i}"])
    saved = json.loads((path / "state.json").read_text())
    for key, obj in (stateful or {}).items():
        prefix = f"{key}:"
        obj.set_state(_join_state(saved["states"][key], {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}))
    return saved["position"]


def finite(logs, key="loss"):
    return logs is None or key not in logs or math.isfinite(float(logs[key]))


class Checkpoint(keras.callbacks.Callback):
    """Resumable checkpoints at every epoch end and every `every_steps` batches.

    Records the position to resume from (`epoch`, `batch` within it, optimizer
    `step`); a checkpoint is never written when the loss is not finite. Place it
    after the callbacks whose state it saves and before `SwapAveragedWeights`, so it
    saves the raw (training) weights.

    Args:
        directory: checkpoint directory.
        every_steps: also checkpoint every this many batches (None: epoch ends only).
        stateful: dict name -> callback with `get_state` / `set_state`.
        keep: checkpoints to keep.
    """

    def __init__(self, directory, every_steps=None, stateful=None, keep=2):
        super().__init__()
        self.directory = pathlib.Path(directory)
        self.every_steps = every_steps
        self.stateful = stateful or {}
        self.keep = keep
        self.batch_offset = 0  # batches of the current epoch done before this fit call
        self._epoch = 0

    def save(self, epoch, batch):
        step = optimizer_step(self.model)
        return write_checkpoint(self.directory, self.model, {"epoch": epoch, "batch": batch, "step": step}, self.stateful, self.keep)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.batch_offset + batch + 1
        if self.every_steps and done % self.every_steps == 0 and finite(logs) and not self.model.stop_training:
            self.save(self._epoch, done)

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
    scored). Place it BEFORE `DropAndGrow`: validation runs before the epoch-end
    topology update, so the weights saved are the ones that were scored (the
    authors' code also saves before updating the topology).

    Args:
        path: a `.weights.h5` file (model weights, masks and optimizer state).
        monitor: epoch log to minimise.
        averaged: save SNT-ASGD's averaged weights once averaging has started.
    """

    def __init__(self, path, monitor="val_loss", averaged=True):
        super().__init__()
        self.path = pathlib.Path(path)
        self.monitor = monitor
        self.averaged = averaged
        self.best = math.inf
        self.best_epoch = None

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state):
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get(self.monitor, math.nan))
        if math.isfinite(value) and value < self.best:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}.weights.h5")
            if self.averaged:
                with averaged_weights(self.model):
                    self.model.save_weights(temporary)
            else:
                self.model.save_weights(temporary)
            os.replace(temporary, self.path)
            self.best, self.best_epoch = value, epoch

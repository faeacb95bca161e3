"""Resumable training of a stateful language model: its callback list and its `fit` protocol.

    run = ks.training.run_callbacks(model_dir, topology_update=..., trigger=..., averaged_validation=True)
    position = run.restore(model)                      # None for a new run
    ks.training.fit_resumable(model, train, epochs=40, steps_per_epoch=200, position=position,
                              validation_data=valid, callbacks=run.callbacks)
"""

import dataclasses
import pathlib

import keras
import tensorflow as tf

from keras_selfish import distribution
from keras_selfish.callbacks.averaging import SwapAveragedWeights
from keras_selfish.callbacks.checkpoint import BestWeights
from keras_selfish.callbacks.checkpoint import Checkpoint
from keras_selfish.callbacks.checkpoint import StopOnNaN
from keras_selfish.callbacks.checkpoint import read_checkpoint
from keras_selfish.callbacks.language_model import EpochHistory
from keras_selfish.callbacks.language_model import PerplexityLogger
from keras_selfish.callbacks.language_model import ResetStates
from keras_selfish.callbacks.topology_update import TopologyUpdate


@dataclasses.dataclass(frozen=True)
class RunCallbacks:
    """The callbacks of one resumable run (what `run_callbacks` returns).

    Attributes:
        callbacks: the list to train with, in order.
        stateful: name -> callback whose state every checkpoint holds.
        checkpoint_dir: the directory `Checkpoint` writes to.
        stop: the `StopOnNaN` (`stop.bad_step`: the step of a non-finite loss).
        best: the `BestWeights` (`best.path`, `best.best_epoch`).
        history: the `EpochHistory` (`history.epochs`: one record per epoch).
    """

    callbacks: list
    stateful: dict
    checkpoint_dir: pathlib.Path
    stop: StopOnNaN
    best: BestWeights
    history: EpochHistory

    def restore(self, model):
        """Load the latest checkpoint into `model` and the stateful callbacks.

        Returns:
            its position `{"epoch", "batch", "step"}`, or None when there is none.
        """
        return read_checkpoint(self.checkpoint_dir, model, self.stateful)


def run_callbacks(
    model_dir,
    *,
    topology_update=None,
    trigger=None,
    averaged_validation=False,
    checkpoint_every=None,
    log_every=100,
    steps_per_epoch=None,
    seq_len=None,
    loggers=(),
):
    """The callbacks of a resumable stateful-LM run, in the order their work must run.

    `StopOnNaN`, `ResetStates`, `PerplexityLogger` (adds `ppl`, `val_ppl`, `lr` to
    the epoch logs), `BestWeights` (`<model_dir>/best.weights.h5`: saves the weights
    validation scored, so before the epoch-end topology update), `topology_update`,
    `trigger` (sees the epoch's validation loss after the update), `EpochHistory`
    (one record per epoch, kept in the checkpoints), `Checkpoint`
    (`<model_dir>/checkpoints`: after every callback whose state it saves, before
    `SwapAveragedWeights`, so it saves the raw weights), `SwapAveragedWeights` when
    `averaged_validation`, then `loggers` (e.g. TensorBoard), which see every log.

    Args:
        model_dir: the run's directory.
        topology_update: a `TopologyUpdate` (e.g. `DropAndGrow`) or None.
        trigger: a `NonMonotonicTrigger` or None.
        averaged_validation: validate SNT-ASGD's averaged weights once it averages.
        checkpoint_every: also checkpoint every this many batches (None: epoch ends).
        log_every: print a progress line every this many batches (0: never).
        steps_per_epoch: batches per epoch, for the progress line.
        seq_len: tokens per sequence, for `EpochHistory`'s training-FLOP count (None: not counted).
        loggers: callbacks that only read the logs, placed last.

    Returns:
        a `RunCallbacks`; the checkpoints hold the state of `best`, `drop_and_grow`
        (the topology update), `trigger` and `history`.
    """
    model_dir = pathlib.Path(model_dir)
    stop = StopOnNaN()
    best = BestWeights(model_dir / "best.weights.h5", monitor="val_loss")
    stateful = {"best": best}
    callbacks = [stop, ResetStates(), PerplexityLogger(log_every, steps_per_epoch), best]
    for name, callback in (("drop_and_grow", topology_update), ("trigger", trigger)):
        if callback is not None:
            stateful[name] = callback
            callbacks.append(callback)
    history = EpochHistory(seq_len)
    stateful["history"] = history
    callbacks.append(history)
    checkpoint_dir = model_dir / "checkpoints"
    callbacks.append(Checkpoint(checkpoint_dir, checkpoint_every, stateful=stateful))
    if averaged_validation:
        callbacks.append(SwapAveragedWeights())
    callbacks.extend(loggers)
    return RunCallbacks(callbacks, stateful, checkpoint_dir, stop, best, history)


def fit_resumable(model, train, *, epochs, steps_per_epoch, callbacks, position=None, validation_data=None, verbose=0):
    """Train up to epoch `epochs` from `position`, each batch of the run exactly once.

    Epoch `e` trains on batches `e * N ... (e + 1) * N - 1` of `train` repeated
    (`N = steps_per_epoch`), so epochs shorter than the split walk on through the
    text. From `position = {"epoch": e, "batch": b, ...}` (what `read_checkpoint`
    returns after the model, its carried states and the callbacks were restored):

    * `0 < b < N`: one `fit` call trains batches `b ... N - 1` of epoch `e` with
      the restored RNN states (every callback's `skip_next_epoch_begin` is set, so
      `ResetStates` keeps them) and with `batch_offset = b` on every callback that
      has one (`Checkpoint`, `PerplexityLogger` count batches of the whole epoch);
    * `b == N` (checkpointed after the epoch's last batch, interrupted before its
      end): validation and every callback's `on_epoch_end` run for epoch `e`, as
      `fit` runs them;
    * then one `fit` call trains epochs `e + 1 ... epochs - 1` (from `e` if `b == 0`),
      unless a callback set `model.stop_training`.

    Args:
        model: a compiled stateful model.
        train: `tf.data.Dataset` of batches, one pass over the training split.
        epochs: epochs to train to (an epoch index, as Keras's `epochs`).
        steps_per_epoch: batches per epoch, at least 1.
        callbacks: e.g. `run_callbacks(...).callbacks`. Every `TopologyUpdate` needs
            an explicit `end_step`: its default, the length of one `fit` call,
            would change when a run is resumed.
        position: the checkpoint's position, or None for a new run.
        validation_data: passed to `fit` (validation after every epoch).
        verbose: passed to `fit`.

    Under a `tf.distribute` strategy (the model built in its scope), every global
    batch of `train` and `validation_data` is split in order over the replicas
    (`ks.distribution.distribute`).
    """
    if not isinstance(train, tf.data.Dataset):
        raise TypeError(f"train must be a tf.data.Dataset of batches (e.g. ks.data.lm_batches(...)), got {type(train).__name__}.")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
    for callback in callbacks:
        if isinstance(callback, TopologyUpdate) and callback.end_step is None:
            raise ValueError(
                f"{type(callback).__name__} has end_step=None, which means the end of each fit call; a resumed run "
                f"trains in more fit calls. Pass end_step=<total optimizer steps, e.g. epochs * steps_per_epoch>."
            )
    epoch, batch = (position["epoch"], position["batch"]) if position else (0, 0)
    if not 0 <= batch <= steps_per_epoch:
        raise ValueError(
            f"the checkpoint is at batch {batch} of epoch {epoch + 1}, past steps_per_epoch={steps_per_epoch}: "
            f"it was written by a run with more batches per epoch; resume with that run's steps_per_epoch."
        )
    model.stop_training = False
    strategy = model.distribute_strategy
    stream = train.repeat()
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = distribution.distribute(strategy, validation_data)
    fit = dict(validation_data=validation_data, callbacks=callbacks, verbose=verbose, shuffle=False)
    if batch and epoch < epochs:
        if batch < steps_per_epoch:
            for callback in callbacks:
                if hasattr(callback, "skip_next_epoch_begin"):
                    callback.skip_next_epoch_begin = True
                if hasattr(callback, "batch_offset"):
                    callback.batch_offset = batch
            model.fit(distribution.distribute(strategy, stream.skip(epoch * steps_per_epoch + batch)), steps_per_epoch=steps_per_epoch - batch,
                      initial_epoch=epoch, epochs=epoch + 1, **fit)
        else:
            _end_epoch(model, epoch, callbacks, validation_data, steps_per_epoch)
        epoch += 1
    if epoch < epochs and not model.stop_training:
        model.fit(distribution.distribute(strategy, stream.skip(epoch * steps_per_epoch)), steps_per_epoch=steps_per_epoch, initial_epoch=epoch, epochs=epochs, **fit)


def _end_epoch(model, epoch, callbacks, validation_data, steps_per_epoch):
    """Validation and the callbacks' epoch end of epoch `epoch`, whose batches are all trained."""
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, verbose=0, epochs=epoch + 1, steps=steps_per_epoch)
    model.stop_training = False
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(epoch)
    logs = {}
    if validation_data is not None:
        scores = model.evaluate(validation_data, callbacks=callback_list, return_dict=True, verbose=0)
        logs = {f"val_{name}": value for name, value in scores.items()}
    callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end(logs)

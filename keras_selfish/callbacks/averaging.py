"""Callbacks for SNT-ASGD: the non-monotonic trigger and evaluation with averaged weights."""

import json
import pathlib

import keras

from keras_selfish.files import atomic_write
from keras_selfish.optimizers.averaged import averaged_weights
from keras_selfish.optimizers.averaged import averaging_optimizer


def _optimizer_or_error(callback):
    optimizer = averaging_optimizer(callback.model)
    if optimizer is None:
        raise ValueError(
            f"{type(callback).__name__} works with ks.optimizers.SNTASGD, but the model's "
            f"optimizer is {type(getattr(callback.model, 'optimizer', None)).__name__}. "
            f"Compile with optimizer=ks.optimizers.SNTASGD(...)."
        )
    return optimizer


class NonMonotonicTrigger(keras.callbacks.Callback):
    """Switches `SNTASGD` to averaging when the monitored value stops improving.

    At every epoch end, with `values` the monitored values of all earlier epochs:
    switch when `len(values) > nonmono` and the current value is worse (higher)
    than `min(values[:-nonmono])`, the best value before the last `nonmono`
    epochs. The earliest switch is therefore at epoch `nonmono + 2` (counting from
    1); it happens once. The epoch logs get `averaging` (0 or 1).

    Place it after `DropAndGrow` and before `SwapAveragedWeights`/`ModelCheckpoint`
    in the callback list. With `ks.callbacks.SwapAveragedWeights`, validation after
    the switch uses the averaged weights, as in the paper.

    Args:
        nonmono: the non-monotone interval (the paper: 5), at least 1.
        monitor: the epoch log to watch (lower is better), e.g. "val_loss".
        state_path: optional JSON file; the trigger's state (values, switched flag,
            switch epoch) is written there after every epoch and read back when
            training starts, so a resumed run continues the same rule. The
            optimizer's own averaging flag is saved with the model.
        verbose: 1 prints a line when averaging starts.
    """

    def __init__(self, nonmono=5, monitor="val_loss", state_path=None, verbose=1):
        super().__init__()
        if not isinstance(nonmono, int) or isinstance(nonmono, bool) or nonmono < 1:
            raise ValueError(f"nonmono must be an integer >= 1, got {nonmono!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of an epoch log such as 'val_loss', got {monitor!r}.")
        self.nonmono = nonmono
        self.monitor = monitor
        self.state_path = None if state_path is None else pathlib.Path(state_path)
        self.verbose = verbose
        self.values = []
        self.switched = False
        self.switch_epoch = None

    def get_state(self):
        """The trigger's state as a JSON-compatible dict."""
        return {"values": list(self.values), "switched": self.switched, "switch_epoch": self.switch_epoch}

    def set_state(self, state):
        self.values = [float(v) for v in state["values"]]
        self.switched = bool(state["switched"])
        self.switch_epoch = state["switch_epoch"]

    def should_switch(self, value):
        """The rule, on the values recorded so far and the current one."""
        return not self.switched and len(self.values) > self.nonmono and value > min(self.values[: -self.nonmono])

    def on_train_begin(self, logs=None):
        optimizer = _optimizer_or_error(self)
        if self.state_path is not None and self.state_path.exists():
            self.set_state(json.loads(self.state_path.read_text()))
        if optimizer.built and optimizer.averaging and not self.switched:
            self.switched = True  # resumed from a checkpoint taken after the switch

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if self.monitor not in logs:
            raise ValueError(
                f"NonMonotonicTrigger monitors {self.monitor!r}, which is not in the epoch logs "
                f"{sorted(logs)}. Pass validation_data to fit() for 'val_loss', or set monitor= "
                f"to one of those keys."
            )
        value = float(logs[self.monitor])
        if self.should_switch(value):
            _optimizer_or_error(self).start_averaging()
            self.switched, self.switch_epoch = True, epoch
            if self.verbose:
                print(f"NonMonotonicTrigger: epoch {epoch + 1}: {self.monitor} {value:.4f} > best before the last {self.nonmono} epochs; averaging starts.")
        self.values.append(value)
        logs["averaging"] = float(self.switched)
        if self.state_path is not None:
            state = json.dumps(self.get_state())
            atomic_write(self.state_path, lambda temporary: temporary.write_text(state))


class SwapAveragedWeights(keras.callbacks.Callback):
    """Evaluates with SNT-ASGD's averaged weights; training continues on the raw ones.

    The counterpart of `keras.callbacks.SwapEMAWeights` for `SNTASGD`: the averages
    are swapped in for every evaluation (validation during `fit`, or
    `model.evaluate(..., callbacks=[SwapAveragedWeights()])`) and the raw weights
    restored bit-exactly afterwards. Before averaging starts it does nothing.

    `ks.callbacks.Checkpoint` saves the raw weights and `ks.callbacks.BestWeights`
    the scored ones wherever they are in the list (`ks.optimizers.averaged.raw_weights`).

    Args:
        swap_on_epoch: also hold the averages from each epoch end to the next epoch
            start (and until training ends), so callbacks after this one, such as
            Keras's `ModelCheckpoint`, see and save the averaged model. Put it after
            `DropAndGrow` and `NonMonotonicTrigger` in the list, so that they
            work on the raw weights.
    """

    def __init__(self, swap_on_epoch=False):
        super().__init__()
        self.swap_on_epoch = swap_on_epoch
        self._swap = None

    def _swap_in(self):
        if self._swap is None:
            _optimizer_or_error(self)
            self._swap = averaged_weights(self.model)
            self._swap.__enter__()

    def _swap_out(self):
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap.__exit__(None, None, None)

    def on_test_begin(self, logs=None):
        self._swap_in()

    def on_test_end(self, logs=None):
        self._swap_out()

    def on_epoch_begin(self, epoch, logs=None):
        self._swap_out()

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch:
            self._swap_in()

    def on_train_end(self, logs=None):
        self._swap_out()

"""Callbacks for stateful language-model training: state resets, perplexity logs, epoch records."""

import math
import time

import keras

from keras_selfish.model_state import optimizer_step
from keras_selfish.model_state import reset_rnn_states
from keras_selfish.sparsity.flops import flops


class ResetStates(keras.callbacks.Callback):
    """Zeroes the carried RNN states at every epoch start and around every evaluation.

    Truncated-BPTT training carries states from batch to batch within an epoch; a
    new pass over the text (or an evaluation split) starts from zero states.

    Args:
        skip_next_epoch_begin: keep the states at the next epoch start once (a run
            resumed mid-epoch restores them from its checkpoint).
    """

    def __init__(self, skip_next_epoch_begin=False):
        super().__init__()
        self.skip_next_epoch_begin = skip_next_epoch_begin

    def _reset(self):
        reset_rnn_states(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if self.skip_next_epoch_begin:
            self.skip_next_epoch_begin = False
        else:
            self._reset()

    def on_test_begin(self, logs=None):
        self._reset()

    def on_test_end(self, logs=None):
        self._reset()


class PerplexityLogger(keras.callbacks.Callback):
    """Adds `ppl`, `val_ppl` and `lr` to the epoch logs and prints progress lines.

    Prints a line every `print_every` batches and one at every epoch end. A
    progress line's ms/batch is the wall time of the batches since the previous
    line (the first line of an epoch: since the epoch start) divided by their
    number, as the authors' log interval reports it, so a one-off cost such as the
    first step's tracing shows only in the line after it. Its loss is the epoch's
    running mean (Keras's `loss` log).

    Args:
        print_every: print a line every this many batches (0: never).
        steps_per_epoch: batches per epoch, for the progress line.
    """

    def __init__(self, print_every=100, steps_per_epoch=None):
        super().__init__()
        self.print_every = print_every
        self.steps_per_epoch = steps_per_epoch
        self.batch_offset = 0

    def _lr(self):
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._start, self._since = epoch, time.perf_counter(), 0
        self._line_start = self._start

    def on_train_batch_end(self, batch, logs=None):
        self._since += 1
        done = self.batch_offset + batch + 1
        if self.print_every and done % self.print_every == 0 and logs and "loss" in logs:
            now = time.perf_counter()
            ms = 1000 * (now - self._line_start) / self._since
            self._line_start, self._since = now, 0
            loss = float(logs["loss"])
            total = f"/{self.steps_per_epoch}" if self.steps_per_epoch else ""
            print(
                f"| epoch {self._epoch + 1} | {done}{total} batches | lr {self._lr():.4g} | {ms:.0f} ms/batch "
                f"| loss {loss:.3f} | ppl {math.exp(min(loss, 50)):.1f}",
                flush=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        if logs is None:
            return
        for key in ("loss", "val_loss"):
            if key in logs:
                logs[key.replace("loss", "ppl")] = math.exp(min(float(logs[key]), 50.0))
        logs["lr"] = self._lr()
        valid = f" | valid ppl {logs['val_ppl']:.2f}" if "val_ppl" in logs else ""
        train = f" | train ppl {logs['ppl']:.2f}" if "ppl" in logs else ""
        print(f"| end of epoch {epoch + 1} | {time.perf_counter() - self._start:.0f} s{train}{valid}", flush=True)


class EpochHistory(keras.callbacks.Callback):
    """Keeps one record per finished epoch; its state goes into the run's checkpoints.

    Each record: `epoch` (1-based), optimizer `step`, the epoch's scalar logs
    (`loss`, `ppl`, `val_loss`, `val_ppl`, `lr`, ...), `seconds` (wall time this
    process spent in the epoch: after a resume, the part trained since) and, with
    `seq_len`, `train_flops_per_sequence` (ks.sparsity.flops of the topology at the
    epoch end). Put it after the callbacks that add logs or change the topology at
    the epoch end and before `Checkpoint`, so a checkpoint holds the records up to
    its epoch and a resumed run keeps them.

    Args:
        seq_len: tokens per sequence for the FLOP count (None: not counted).
    """

    def __init__(self, seq_len=None):
        super().__init__()
        self.seq_len = seq_len
        self.epochs = []

    def get_state(self):
        return {"epochs": self.epochs}

    def set_state(self, state):
        self.epochs = list(state["epochs"])

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "step": optimizer_step(self.model), "seconds": time.perf_counter() - getattr(self, "_start", time.perf_counter())}
        record.update({k: float(v) for k, v in (logs or {}).items() if not k.startswith("sparsity/") and _is_scalar(v)})
        if self.seq_len:
            record["train_flops_per_sequence"] = flops(self.model, self.seq_len)["train"]["sparse"]
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch + 1] + [record]


def _is_scalar(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True

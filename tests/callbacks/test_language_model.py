"""PerplexityLogger's progress lines: ms/batch of the interval since the previous line."""

import types

import keras_selfish as ks
from keras_selfish.callbacks import language_model


class FakeClock:
    """`time` stand-in whose perf_counter returns the scripted times in turn."""

    def __init__(self, times):
        self._times = iter(times)

    def perf_counter(self):
        return next(self._times)


def test_progress_line_times_only_the_batches_since_the_previous_line(monkeypatch, capsys):
    # Epoch starts at t=0; batch 1 takes 10 s (e.g. tracing), then 1 s per batch.
    monkeypatch.setattr(language_model, "time", FakeClock([0.0, 11.0, 13.0, 15.0]))
    logger = ks.callbacks.PerplexityLogger(print_every=2, steps_per_epoch=6)
    logger.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=0.5)))
    logger.on_epoch_begin(0)
    for batch in range(6):
        logger.on_train_batch_end(batch, {"loss": 2.0})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[1] for line in lines] == ["2/6 batches", "4/6 batches", "6/6 batches"]
    # (11 - 0) / 2, then (13 - 11) / 2 and (15 - 13) / 2: not the epoch's running average (13 / 4, 15 / 6).
    assert [line.split(" | ")[3] for line in lines] == ["5500 ms/batch", "1000 ms/batch", "1000 ms/batch"]


def test_resumed_epoch_counts_the_batches_of_this_fit_only(monkeypatch, capsys):
    monkeypatch.setattr(language_model, "time", FakeClock([0.0, 3.0]))
    logger = ks.callbacks.PerplexityLogger(print_every=4)
    logger.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=0.5)))
    logger.batch_offset = 1  # resumed after batch 1 of the epoch
    logger.on_epoch_begin(0)
    for batch in range(3):
        logger.on_train_batch_end(batch, {"loss": 2.0})
    line = capsys.readouterr().out.strip()
    assert " | 4 batches | " in line and " | 1000 ms/batch | " in line

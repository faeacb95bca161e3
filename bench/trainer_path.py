"""The trainer's real path, timed: `train_lm`'s model and callbacks over PTB batches.

Variants, each a `model.fit` of `batches` batches per round, interleaved round by
round in one process (so drifts in machine speed hit all alike):

* `trainer`: the `train_lm` model (stateful sparse LSTM LM, SNT-ASGD) with the
  callback list `ks.training.run_callbacks` builds for `train_lm` (StopOnNaN,
  ResetStates, PerplexityLogger, BestWeights, DropAndGrow, NonMonotonicTrigger,
  Checkpoint every 200 steps, SwapAveragedWeights, TensorBoard), run through
  `ks.training.fit_resumable` with a short validation split at each round's end;
* `bare_fit`: the same model (its own copy) in `model.fit` with no callbacks;
* `bare_step`: that model's compiled train step called in a Python loop (no fit);
* `stock_fit`: a stock Keras LM of the same shape (keras.layers) in `model.fit`.

Batch time is the interval between consecutive train-step calls inside one fit
(the step plus whatever the loop and callbacks do between two steps), so the
epoch end (validation, the epoch's topology update and checkpoint) is left out, as
the authors' ms/batch leaves it out. The profile splits one trainer batch into
the input pipeline, the compiled step, the host read of the logs, each
callback's batch hooks and the share of a batch of the checkpoint written every
200 batches.
"""

import pathlib
import tempfile
import time

import keras
import numpy as np
from keras.src.utils.python_utils import pythonify_logs

import keras_selfish as ks

# The authors' small recipe (issue 14): small_ptb with these overrides.
RECIPE = {"preset": "small_ptb", "lr": 40.0, "dropout": 0.2, "death_rate": 0.5}
CHECKPOINT_EVERY, LOG_EVERY = 200, 100  # train_lm's defaults


def _recipe():
    preset = ks.models.preset(RECIPE["preset"])
    model, train = dict(preset["model"]), dict(preset["train"])
    model["dropout"] = RECIPE["dropout"]
    train.update(lr=RECIPE["lr"], death_rate=RECIPE["death_rate"])
    return model, train


def sparse_lm(vocabulary):
    """The model `train_lm --preset=small_ptb --lr=40 --dropout=0.2 --death_rate=0.5` builds."""
    model_config, train = _recipe()
    arch = model_config.pop("arch")
    model = ks.models.language_model(arch, len(vocabulary), batch_size=train["batch_size"], seq_len=train["bptt"],
                                     stateful=True, seed=train["seed"], vocabulary=vocabulary.itos, **model_config)
    ks.sparsity.initialize(model, train["density"], "uniform", seed=train["seed"])
    optimizer = ks.optimizers.SNTASGD(train["lr"], weight_decay=train["wdecay"], global_clipnorm=train["clip"])
    model.compile(optimizer, ks.losses.SparseSoftmaxCrossEntropy(), jit_compile=False)
    optimizer.build(model.trainable_variables)
    return model


def stock_lm(vocab_size):
    """Embedding -> 2 x LSTM -> Dense with keras.layers, the same widths, stateful, SGD."""
    model_config, train = _recipe()
    width = model_config["nhid"]
    inputs = keras.Input((train["bptt"],), batch_size=train["batch_size"], dtype="int32")
    x = keras.layers.Embedding(vocab_size, model_config["emsize"])(inputs)
    x = keras.layers.LSTM(width, return_sequences=True, stateful=True)(x)
    x = keras.layers.LSTM(width, return_sequences=True, stateful=True)(x)
    model = keras.Model(inputs, keras.layers.Dense(vocab_size)(x))
    model.compile(keras.optimizers.SGD(train["lr"], global_clipnorm=train["clip"]),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    return model


def trainer_callbacks(model_dir, train, steps_per_round, rounds):
    """`train_lm`'s callback list for this recipe (its `build_run_callbacks`)."""
    _, config = _recipe()
    drop_and_grow = ks.callbacks.DropAndGrow(drop="magnitude", grow="random", redistribution="cross_gate",
                                             drop_fraction=config["death_rate"], update_every="epoch",
                                             end_step=rounds * steps_per_round, seed=config["seed"])
    trigger = ks.callbacks.NonMonotonicTrigger(config["nonmono"], monitor="val_loss")
    return ks.training.run_callbacks(
        model_dir, topology_update=drop_and_grow, trigger=trigger, averaged_validation=True,
        checkpoint_every=CHECKPOINT_EVERY, log_every=LOG_EVERY, steps_per_epoch=steps_per_round,
        loggers=[keras.callbacks.TensorBoard(str(pathlib.Path(model_dir) / "tensorboard"))],
    )


class StepTimes:
    """Records the start time of every call of `model.train_function` while active."""

    def __init__(self, model):
        self.model, self.starts = model, []

    def __enter__(self):
        self.model.make_train_function()
        self._inner = inner = self.model.train_function

        def train_function(iterator):
            self.starts.append(time.perf_counter())
            return inner(iterator)

        self.model.train_function = train_function
        return self

    def __exit__(self, *exc):
        self.model.train_function = self._inner

    def intervals(self):
        return list(np.diff(self.starts))


def _fit_plain(model, stream, batches):
    model.fit(stream, steps_per_epoch=batches, epochs=1, verbose=0, shuffle=False)


def _step_loop(model, stream, batches):
    model.make_train_function()
    iterator = iter(stream)
    for _ in range(batches):
        model.train_function(iterator)
    np.asarray(model.optimizer.iterations)  # the last step is done


def profile(model, callbacks, stream, batches):
    """Median seconds per batch of each part of one trainer batch, on a manual loop."""
    parts = {"input pipeline (next batch alone)": [], "compiled train step": [], "host read of the logs": []}
    parts.update({f"callback {type(c).__name__}": [] for c in callbacks})
    loader = iter(stream)
    for _ in range(batches):
        start = time.perf_counter()
        next(loader)
        parts["input pipeline (next batch alone)"].append(time.perf_counter() - start)
    model.make_train_function()
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, verbose=0, epochs=1, steps=batches)
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(0)
    iterator = iter(stream)
    for batch in range(batches):
        start = time.perf_counter()
        logs = model.train_function(iterator)
        parts["compiled train step"].append(time.perf_counter() - start)
        start = time.perf_counter()
        logs = pythonify_logs(logs)
        parts["host read of the logs"].append(time.perf_counter() - start)
        for callback in callbacks:
            start = time.perf_counter()
            callback.on_train_batch_begin(batch)
            callback.on_train_batch_end(batch, dict(logs))
            parts[f"callback {type(callback).__name__}"].append(time.perf_counter() - start)
    callback_list.on_train_end()
    result = {name: round(1000 * float(np.median(t)), 3) for name, t in parts.items()}
    checkpoint = next(c for c in callbacks if isinstance(c, ks.callbacks.Checkpoint))
    start = time.perf_counter()
    checkpoint.save(0, batches)
    result[f"checkpoint write / {CHECKPOINT_EVERY} (its share of a batch)"] = round(1000 * (time.perf_counter() - start) / CHECKPOINT_EVERY, 3)
    return result


def _summary(intervals, seconds_per_round, tokens):
    ms = 1000 * float(np.median(intervals))
    q25, q75 = (1000 * float(q) for q in np.percentile(intervals, [25, 75]))
    return {"ms_per_batch": round(ms, 2), "ms_q25": round(q25, 2), "ms_q75": round(q75, 2),
            "ms_mean": round(1000 * float(np.mean(intervals)), 2), "tokens_per_s": round(tokens / ms * 1000, 1),
            "seconds_per_round": round(seconds_per_round, 2)}


def measure(data_dir, batches, rounds, variants):
    """Interleaved rounds of every variant; returns the result dict (see the module docstring)."""
    corpus = ks.data.load_corpus("ptb", data_dir)
    _, config = _recipe()
    train = ks.data.lm_batches(corpus.train, config["batch_size"], config["bptt"])
    valid = ks.data.lm_batches(corpus.valid, config["batch_size"], config["bptt"]).take(10)
    stream = train.repeat()
    tokens = config["batch_size"] * config["bptt"]
    model_dir = tempfile.mkdtemp(prefix="throughput-trainer-")
    keras.utils.set_random_seed(config["seed"])
    models = {}
    if "trainer" in variants:
        models["trainer"] = sparse_lm(corpus.vocabulary)
        run = trainer_callbacks(model_dir, train, batches, rounds + 1)
    if {"bare_fit", "bare_step"} & set(variants):
        models["bare"] = sparse_lm(corpus.vocabulary)
    if "stock_fit" in variants:
        models["stock"] = stock_lm(len(corpus.vocabulary))

    def trainer(round_):
        position = {"epoch": round_, "batch": 0, "step": ks.model_state.optimizer_step(models["trainer"])}
        ks.training.fit_resumable(models["trainer"], train, epochs=round_ + 1, steps_per_epoch=batches,
                                  position=position if round_ else None, validation_data=valid, callbacks=run.callbacks)

    calls = {
        "trainer": ("trainer", trainer),
        "bare_fit": ("bare", lambda r: _fit_plain(models["bare"], stream, batches)),
        "bare_step": ("bare", lambda r: _step_loop(models["bare"], stream, batches)),
        "stock_fit": ("stock", lambda r: _fit_plain(models["stock"], stream, batches)),
    }
    calls = {name: calls[name] for name in variants}
    intervals = {name: [] for name in calls}
    seconds = {name: 0.0 for name in calls}
    for round_ in range(rounds + 1):  # round 0 warms up (tracing, first topology update)
        for name, (model_key, call) in calls.items():
            start = time.perf_counter()
            with StepTimes(models[model_key]) as times:
                call(round_)
            if round_:
                intervals[name] += times.intervals()
                seconds[name] += time.perf_counter() - start
    result = {name: _summary(intervals[name], seconds[name] / rounds, tokens) for name in calls}
    if "trainer" in calls:
        result["trainer_profile_ms"] = profile(models["trainer"], run.callbacks, stream, batches)
    for base in ("bare_fit", "bare_step", "stock_fit"):
        if "trainer" in result and base in result:
            result[f"ratio_trainer_to_{base}"] = round(result["trainer"]["ms_per_batch"] / result[base]["ms_per_batch"], 3)
    return result

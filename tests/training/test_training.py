"""ks.training: the ordered callback list and fit_resumable, interrupted and resumed (no corpus needed)."""

import keras
import numpy as np
import pytest

import keras_selfish as ks

VOCAB, BATCH, SEQ, PASS = 30, 4, 5, 7  # PASS: batches in one pass over the synthetic text
STEPS, EPOCHS, EVERY = 4, 3, 2  # batches per epoch (epochs walk on through the text), checkpoint every EVERY


def batches(split_seed=0, num=PASS):
    """A stateful-LM split: a noisy counting pattern, so the model learns something."""
    rng = np.random.default_rng(split_seed)
    ids = (np.arange(BATCH * (num * SEQ + 1)) + rng.integers(0, 3, BATCH * (num * SEQ + 1))) % VOCAB
    return ks.data.lm_batches(ids, BATCH, SEQ)


def build():
    keras.utils.set_random_seed(7)
    model = ks.models.language_model("lstm", VOCAB, batch_size=BATCH, seq_len=SEQ, stateful=True, seed=7, emsize=8, nhid=8, nlayers=1, dropout=0.1)
    ks.sparsity.initialize(model, 0.5, seed=7)
    model.compile(ks.optimizers.SNTASGD(2.0, global_clipnorm=0.25), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model


class Interrupted(Exception):
    pass


class Recorder(keras.callbacks.Callback):
    """`(epoch, batch of the epoch)` of every trained batch; counts with `batch_offset` as Checkpoint does."""

    def __init__(self):
        super().__init__()
        self.batch_offset = 0
        self.trained = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.trained.append((self._epoch, self.batch_offset + batch))

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0


class Crash(keras.callbacks.Callback):
    """Raises, as a killed process stops: after batch `batch` of `epoch`, or at its validation (batch None)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch = epoch, batch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.epoch and batch + 1 == self.batch:
            raise Interrupted

    def on_test_begin(self, logs=None):
        if self._epoch == self.epoch and self.batch is None:
            raise Interrupted


def train(model_dir, crash=None):
    """One process of a run in `model_dir`: restore, then fit_resumable until the end or `crash`."""
    model = build()
    recorder = Recorder()
    run = ks.training.run_callbacks(
        model_dir,
        topology_update=ks.callbacks.DropAndGrow(update_every=3, end_step=EPOCHS * STEPS, seed=1, verbose=0),
        trigger=ks.callbacks.NonMonotonicTrigger(1, verbose=0),
        averaged_validation=True,
        checkpoint_every=EVERY,
        log_every=0,
        loggers=[recorder] + ([crash] if crash else []),
    )
    position = run.restore(model)
    try:
        ks.training.fit_resumable(
            model, batches(), epochs=EPOCHS, steps_per_epoch=STEPS, position=position, validation_data=batches(1, 2), callbacks=run.callbacks
        )
    except Interrupted:
        pass
    return model, run, position, recorder.trained


def state(model, run):
    return {
        "weights": [np.asarray(w) for w in model.get_weights()],
        "optimizer": [np.asarray(v) for v in model.optimizer.variables],
        "updates": [(r["step"], r["active"], r["topology_change"]) for r in run.stateful["drop_and_grow"].history],
        "trigger": run.stateful["trigger"].get_state(),
        "best": run.best.get_state(),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, run, _, trained = train(tmp_path_factory.mktemp("uninterrupted"))
    return state(model, run), trained


@pytest.mark.parametrize(
    "crash, resumed_at",
    [
        (Crash(epoch=1, batch=3), {"epoch": 1, "batch": 2, "step": STEPS + 2}),  # mid-epoch; batch 3 is lost and retrained
        (Crash(epoch=0, batch=None), {"epoch": 0, "batch": STEPS, "step": STEPS}),  # after the last batch, before the epoch end
    ],
    ids=["mid_epoch", "before_epoch_end"],
)
def test_interrupted_and_resumed_run_trains_every_batch_once_and_ends_like_an_uninterrupted_one(uninterrupted, crash, resumed_at, tmp_path):
    reference, every_batch = uninterrupted
    assert every_batch == [(e, b) for e in range(EPOCHS) for b in range(STEPS)]

    _, _, started, first = train(tmp_path, crash)
    assert started is None
    model, run, position, second = train(tmp_path)
    assert position == resumed_at
    kept = [t for t in first if t < (position["epoch"], position["batch"])]  # trained before the checkpoint
    assert kept + second == every_batch
    assert ks.model_state.optimizer_step(model) == EPOCHS * STEPS
    resumed = state(model, run)
    # Same ops on the same inputs and restored RNG/RNN states: bit-identical.
    for key in ("weights", "optimizer"):
        assert len(resumed[key]) == len(reference[key])
        for got, want in zip(resumed[key], reference[key]):
            np.testing.assert_array_equal(got, want)
    assert resumed["updates"] == reference["updates"] and len(resumed["updates"]) == EPOCHS * STEPS // 3
    assert resumed["trigger"] == reference["trigger"] and resumed["best"] == reference["best"]


def test_run_callbacks_order():
    topology = ks.callbacks.DropAndGrow(end_step=10, seed=0)
    trigger = ks.callbacks.NonMonotonicTrigger(2)
    board = keras.callbacks.TensorBoard("unused")
    run = ks.training.run_callbacks("run", topology_update=topology, trigger=trigger, averaged_validation=True, loggers=[board])
    types = [type(c) for c in run.callbacks]
    assert types == [
        ks.callbacks.StopOnNaN,
        ks.callbacks.ResetStates,
        ks.callbacks.PerplexityLogger,
        ks.callbacks.BestWeights,
        ks.callbacks.DropAndGrow,
        ks.callbacks.NonMonotonicTrigger,
        ks.callbacks.EpochHistory,
        ks.callbacks.Checkpoint,
        ks.callbacks.SwapAveragedWeights,
        keras.callbacks.TensorBoard,
    ]
    assert run.stateful == {"best": run.best, "drop_and_grow": topology, "trigger": trigger, "history": run.history}
    assert run.callbacks[0] is run.stop and str(run.best.path) == "run/best.weights.h5" and str(run.checkpoint_dir) == "run/checkpoints"
    plain = ks.training.run_callbacks("run")
    assert [type(c).__name__ for c in plain.callbacks] == ["StopOnNaN", "ResetStates", "PerplexityLogger", "BestWeights", "EpochHistory", "Checkpoint"]
    assert plain.stateful == {"best": plain.best, "history": plain.history}


def test_fit_resumable_rejects_what_cannot_resume():
    fit = ks.training.fit_resumable
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        fit(None, [(1, 2)], epochs=1, steps_per_epoch=1, callbacks=[])
    with pytest.raises(ValueError, match="end_step=<total optimizer steps"):
        fit(None, batches(), epochs=1, steps_per_epoch=1, callbacks=[ks.callbacks.DropAndGrow(seed=0)])
    with pytest.raises(ValueError, match="past steps_per_epoch=4"):
        fit(None, batches(), epochs=2, steps_per_epoch=4, callbacks=[], position={"epoch": 0, "batch": 5, "step": 5})

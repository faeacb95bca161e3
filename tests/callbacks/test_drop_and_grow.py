"""DropAndGrow / SelfishRNN on real training: invariants, slots, schedule, logs, errors."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.sparsity import rewire
from keras_selfish.sparsity import topology
from tests.callbacks.lm import BATCH
from tests.callbacks.lm import MaskInvariant
from tests.callbacks.lm import compile_lm
from tests.callbacks.lm import tiny_lm
from tests.callbacks.lm import tokens


def active_counts(model):
    return [int(mw.mask.numpy().sum()) for mw in ks.sparsity.collect(model)]


def masks(model):
    return [mw.mask.numpy().copy() for mw in ks.sparsity.collect(model)]


def count_traces(model):
    traces = []
    train_step = model.train_step

    def counting(data):
        traces.append(1)
        return train_step(data)

    model.train_step = counting
    return traces


def averaging_sntasgd():
    return ks.optimizers.SNTASGD(0.5, global_clipnorm=0.25)


def slot_kinds(slots):
    """`["momentum", "velocity"]` for Adam's slots: the suffix Keras gives each slot's name."""
    return [slot.name.rsplit("_", 1)[-1] for slot in slots]


class SlotsAtInactive(keras.callbacks.Callback):
    """Records, after every batch, the largest |slot value| at an inactive position."""

    def __init__(self):
        super().__init__()
        self.worst = []

    def on_train_batch_end(self, batch, logs=None):
        self.worst.append(max(
            float(np.abs(slot.numpy()[mw.mask.numpy() == 0]).max(initial=0))
            for mw in ks.sparsity.collect(self.model)
            for slot in rewire.optimizer_slots(self.model.optimizer, mw.variable)
        ))


@pytest.mark.parametrize(
    "optimizer, expected_slots",
    [
        (lambda: keras.optimizers.SGD(0.5, momentum=0.9), ["momentum"]),
        (lambda: keras.optimizers.Adam(0.01), ["momentum", "velocity"]),
        (averaging_sntasgd, ["average", "count"]),
    ],
    ids=["sgd_momentum", "adam", "sntasgd"],
)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_updates_keep_counts_and_inactive_weights_exactly_zero(optimizer, expected_slots, jit_compile):
    x, y = tokens(batches=12)
    model = compile_lm(tiny_lm(), optimizer(), jit_compile=jit_compile)
    if isinstance(model.optimizer, ks.optimizers.SNTASGD):
        model.optimizer.build(model.trainable_variables)
        model.optimizer.start_averaging()
    before = active_counts(model)
    updates = ks.callbacks.DropAndGrow(drop_fraction=0.5, update_every=3, seed=0, verbose=0)
    invariant, slots_at_inactive = MaskInvariant(), SlotsAtInactive()
    traces = count_traces(model)
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[updates, invariant, slots_at_inactive], verbose=0)
    assert len(updates.history) == 8
    assert max(invariant.worst) == 0.0
    for mw in ks.sparsity.collect(model):
        slots = rewire.optimizer_slots(model.optimizer, mw.variable)
        assert slot_kinds(slots) == expected_slots, mw.name
        for slot in slots:
            assert np.any(slot.numpy()[mw.mask.numpy() == 1] != 0), slot.name  # trained state survives the updates
    if isinstance(model.optimizer, ks.optimizers.SNTASGD):
        # SNT-ASGD's averages and counters are masked at every step (also between updates);
        # SGD's and Adam's slots are not (their values at inactive positions never reach the weights).
        assert max(slots_at_inactive.worst) == 0.0
    assert active_counts(model) == before
    for record in updates.history:
        assert record["active"] == sum(before)
        assert sum(w["dropped"] for w in record["weights"].values()) > 0

    reference = compile_lm(tiny_lm(), optimizer(), jit_compile=jit_compile)
    if isinstance(reference.optimizer, ks.optimizers.SNTASGD):
        reference.optimizer.build(reference.trainable_variables)
        reference.optimizer.start_averaging()
    reference_traces = count_traces(reference)
    reference.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    assert len(traces) == len(reference_traces)


def test_float16_weights_take_the_numpy_rule_and_tensorflow_rewrite():
    # The compiled kernels and in-place writes handle float32/float64 only.
    x = np.random.default_rng(0).standard_normal((32, 6)).astype("float16")
    model = keras.Sequential([keras.Input((6,)), ks.layers.MaskedDense(16, dtype="float16"), ks.layers.MaskedDense(3, dtype="float16")])
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    before = active_counts(model)
    updates = ks.callbacks.SelfishRNN(0.5, update_every=2, seed=0, verbose=0)
    invariant = MaskInvariant()
    model.fit(x, x[:, :3], batch_size=8, epochs=2, callbacks=[updates, invariant], verbose=0)
    assert len(updates.history) == 4
    assert updates.history[-1]["topology_change"] > 0
    assert active_counts(model) == before and max(invariant.worst) == 0.0


def test_same_seed_gives_identical_masks_and_other_seed_differs():
    x, y = tokens()
    runs = []
    for seed in (3, 3, 4):
        keras.utils.set_random_seed(0)
        model = compile_lm(tiny_lm())
        model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[ks.callbacks.SelfishRNN(seed=seed, verbose=0)], verbose=0)
        runs.append(masks(model))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_selfish_rnn_follows_the_papers_cosine_schedule_at_epoch_ends():
    x, y = tokens(batches=5)
    model = compile_lm(tiny_lm())
    callback = ks.callbacks.SelfishRNN(drop_fraction=0.5, seed=0, verbose=0)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, callbacks=[callback], verbose=0)
    assert [r["step"] for r in callback.history] == [5, 10, 15]
    np.testing.assert_allclose([r["drop_rate"] for r in callback.history], [0.37625, 0.12875, 0.005])
    np.testing.assert_allclose(history.history["sparsity/drop_rate"], [0.37625, 0.12875, 0.005])
    name = ks.sparsity.collect(model)[1].name
    for key in ("active", "density", "dropped", "grown", "i/density", "f/active"):
        assert len(history.history[f"sparsity/{name}/{key}"]) == 3
    first = callback.history[0]["weights"][name]
    assert first["dropped"] == first["grown"] == int(np.ceil(0.37625 * first["active"]))
    assert 0 < callback.history[-1]["topology_change"] <= 1


def test_grown_weights_start_at_zero_and_optimizer_slots_reset_where_topology_changed():
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(), keras.optimizers.Adam(0.01))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    weights = ks.sparsity.collect(model)
    old_masks = masks(model)
    callback = ks.callbacks.DropAndGrow(drop_fraction=0.6, schedule="constant", update_every=1, seed=0, verbose=0)
    callback.set_model(model)
    callback.params = {"epochs": 1, "steps": 4}
    callback.on_train_begin()
    callback.update(4)
    for mw, old in zip(weights, old_masks):
        new = mw.mask.numpy()
        grown = (new == 1) & (old == 0)
        dropped = (new == 0) & (old == 1)
        assert grown.sum() == dropped.sum() > 0
        assert np.all(mw.variable.numpy()[grown] == 0)
        slots = rewire.optimizer_slots(model.optimizer, mw.variable)
        assert slot_kinds(slots) == ["momentum", "velocity"]  # Adam m and v
        for slot in slots:
            assert np.all(slot.numpy()[grown | dropped] == 0)
            assert np.any(slot.numpy()[(new == 1) & (old == 1)] != 0)


def test_gate_wise_keeps_every_gate_count_and_cross_gate_lets_gates_drift():
    x, y = tokens(batches=10)
    gate_counts = {}
    for mode in ("gate_wise", "cross_gate"):
        keras.utils.set_random_seed(0)
        model = compile_lm(tiny_lm(layers=1))
        callback = ks.callbacks.DropAndGrow(redistribution=mode, drop_fraction=0.7, schedule="constant", update_every=2, seed=0, verbose=0)
        initial = ks.sparsity.summary(model, print_fn=None)
        model.fit(x, y, batch_size=BATCH, epochs=4, callbacks=[callback], verbose=0)
        gate_counts[mode] = [
            [[g["active"] for g in w["gates"].values()] for w in r["weights"].values()] for r in callback.history
        ]
        start = [[g["active"] for g in row["gates"]] for row in initial]
        if mode == "gate_wise":
            assert all(counts == start for counts in gate_counts[mode])
        else:
            assert any(counts != start for counts in gate_counts[mode])
            # Matrix totals are fixed even though the gate split moves.
            assert all([sum(c) for c in counts] == [sum(c) for c in start] for counts in gate_counts[mode])


def test_momentum_growth_picks_the_largest_momentum_among_free_positions():
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(layers=1))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    mw = ks.sparsity.collect(model)[1]
    momentum = rewire.momentum_slot(model.optimizer, mw.variable).numpy().reshape(-1)
    values, old = mw.variable.numpy().reshape(-1), mw.mask.numpy().reshape(-1)
    callback = ks.callbacks.DropAndGrow(grow="momentum", drop_fraction=0.4, schedule="constant", update_every=1, verbose=0)
    callback.set_model(model)
    callback.params = {"epochs": 1, "steps": 4}
    callback.on_train_begin()
    callback.update(4)
    active = np.flatnonzero(old)
    k = topology.drop_count(len(active), 0.4)
    survivors = np.setdiff1d(active, sorted(active, key=lambda i: (abs(values[i]), i))[:k])
    free = np.setdiff1d(np.arange(len(old)), survivors)
    expected_grown = sorted(free, key=lambda i: (-abs(momentum[i]), i))[:k]
    np.testing.assert_array_equal(np.flatnonzero(mw.mask.numpy().reshape(-1)), np.union1d(survivors, expected_grown))


def test_gradient_growth_uses_the_dense_gradient_of_one_batch_and_restores_states():
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(layers=1))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    weights = ks.sparsity.collect(model)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x[:BATCH], y=y[:BATCH], y_pred=model(x[:BATCH], training=True))
    grads = [g.numpy() if not isinstance(g, tf.IndexedSlices) else tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [mw.variable.value for mw in weights])]
    callback = ks.callbacks.DropAndGrow(grow="gradient", data=[(x[:BATCH], y[:BATCH])], verbose=0)
    callback.set_model(model)
    callback.params = {"epochs": 1, "steps": 4}
    callback.on_train_begin()
    scores = callback._dense_gradients()
    for ours, reference in zip(scores, grads):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)
        assert np.any(reference[ours != 0] != 0)

    # On a stateful LM with dropout, each mid-epoch probe leaves the carried RNN
    # states, the dropout seed states and the metrics exactly as training left them.
    keras.utils.set_random_seed(0)
    stateful = ks.models.language_model(
        "awd_lstm", 40, emsize=8, nhid=8, nlayers=2, dropouti=0.2, wdrop=0.2, batch_size=BATCH, seq_len=6, stateful=True
    )
    ks.sparsity.initialize(stateful, 0.4, seed=0)
    compile_lm(stateful)
    callback = ks.callbacks.DropAndGrow(grow="gradient", data=[(x[4:8], y[4:8])], update_every=2, seed=0, verbose=0)
    probes, dense_gradients = [], callback._dense_gradients

    def recording_probe():
        carried = ks.model_state.carried_variables(stateful) + stateful.metrics_variables
        before = [v.numpy().copy() for v in carried]
        scores = dense_gradients()
        probes.append((before, [v.numpy() for v in carried]))
        return scores

    callback._dense_gradients = recording_probe
    stateful.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[callback], verbose=0)
    assert [r["step"] for r in callback.history] == [2, 4]
    assert len(probes) == 2 and len(ks.model_state.rnn_states(stateful)) == 4
    for before, after in probes:
        assert all(np.any(state != 0) for state in before[:4])  # the states are carried
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)


def test_steps_per_execution_bidirectional_stacked_gru():
    x, y = tokens(batches=12)
    model = compile_lm(tiny_lm(cell="gru", bidirectional=True), steps_per_execution=4)
    before = active_counts(model)
    callback = ks.callbacks.DropAndGrow(drop="set", update_every=6, seed=0, verbose=0)
    invariant = MaskInvariant()
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback, invariant], verbose=0)
    # Batch ends are seen at steps 4, 8, 12: multiples of 6 are crossed at 8 and 12.
    assert [r["step"] for r in callback.history] == [8, 12]
    assert len(ks.sparsity.collect(model)) == 1 + 2 * 2 * 2 + 1
    assert active_counts(model) == before
    assert max(invariant.worst) == 0.0


def test_exclude_leaves_named_weights_untouched():
    x, y = tokens(batches=4)
    model = compile_lm(tiny_lm(layers=1))
    embedding = ks.sparsity.collect(model)[0]
    before = embedding.mask.numpy().copy()
    callback = ks.callbacks.SelfishRNN(exclude="masked_embedding", seed=0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[callback], verbose=0)
    np.testing.assert_array_equal(embedding.mask.numpy(), before)
    assert embedding.name not in callback.history[0]["weights"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop": "smallest"}, "Unknown drop rule 'smallest'"),
        ({"grow": "best"}, "Unknown grow rule 'best'"),
        ({"redistribution": "layer"}, "Unknown redistribution"),
        ({"schedule": "linear"}, "Unknown schedule"),
        ({"drop_fraction": 0.0}, r"drop_fraction must be in \(0, 1\)"),
        ({"drop_fraction": 1.0}, r"drop_fraction must be in \(0, 1\)"),
        ({"update_every": 0}, "update_every must be 'epoch' or a positive"),
        ({"end_step": -3}, "end_step must be None"),
        ({"grow": "gradient"}, "needs batches"),
    ],
)
def test_bad_configurations_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ks.callbacks.DropAndGrow(**kwargs)


def test_model_problems_are_reported_when_training_starts():
    x, y = tokens(batches=2)
    dense = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(40, 4), keras.layers.Dense(40)])
    dense.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="has no masked weights"):
        dense.fit(x, y, epochs=1, callbacks=[ks.callbacks.SelfishRNN(verbose=0)], verbose=0)

    uncompiled = tiny_lm()
    callback = ks.callbacks.DropAndGrow(grow="gradient", data=[(x, y)], verbose=0)
    callback.set_model(uncompiled)
    with pytest.raises(ValueError, match="needs a compiled model"):
        callback.on_train_begin()

    no_momentum = compile_lm(tiny_lm(), keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="keeps no momentum"):
        no_momentum.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[ks.callbacks.DropAndGrow(grow="momentum", verbose=0)], verbose=0)

    import tensorflow as tf

    unknown_length = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat().take(2)
    unknown_length = unknown_length.filter(lambda a, b: True)
    with pytest.raises(ValueError, match="Pass end_step"):
        compile_lm(tiny_lm()).fit(unknown_length, epochs=1, callbacks=[ks.callbacks.SelfishRNN(verbose=0)], verbose=0)

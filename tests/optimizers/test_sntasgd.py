"""SNT-ASGD against an independent numpy implementation of SELFISH_RNN.md section 5."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks
from keras_selfish import keras_private
from keras_selfish.sparsity.rewire import Change
from keras_selfish.sparsity.rewire import rewire

B, T, V, D, U = 4, 3, 7, 5, 6
LR, WD, CLIP = 0.3, 0.01, 0.4  # the gradient norm is 0.37-0.57: clipping binds at most steps


def build(jit_compile):
    model = keras.Sequential(
        [
            keras.Input((T,), batch_size=B, dtype="int32"),
            ks.layers.MaskedEmbedding(V, D),
            keras.layers.GlobalAveragePooling1D(),
            ks.layers.MaskedDense(U),
        ]
    )
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.layers[-1].bias.assign(np.linspace(-0.2, 0.2, U).astype("float32"))
    model.compile(ks.optimizers.SNTASGD(LR, weight_decay=WD, global_clipnorm=CLIP), "mse", jit_compile=jit_compile)
    return model


class NumpySNTASGD:
    """The update of SELFISH_RNN.md section 5, written from the equations (float64)."""

    def __init__(self, embedding, kernel, bias, masks):
        self.params = [embedding.astype(np.float64), kernel.astype(np.float64), bias.astype(np.float64)]
        self.masks = [masks[0].astype(np.float64), masks[1].astype(np.float64), None]
        self.averages = [np.zeros_like(p) for p in self.params]
        self.counts = [np.zeros_like(self.params[0]), np.zeros_like(self.params[1]), 0.0]
        self.averaging = False
        self.clipped = 0

    def gradients(self, ids, y):
        embedding, kernel, bias = self.params
        hidden = embedding[ids].mean(axis=1)
        d_pred = 2.0 * (hidden @ kernel + bias - y) / y.size
        d_hidden = d_pred @ kernel.T
        d_embedding = np.zeros_like(embedding)
        np.add.at(d_embedding, ids, np.repeat(d_hidden[:, None, :] / T, T, axis=1))
        return [d_embedding, hidden.T @ d_pred, d_pred.sum(axis=0)]

    def step(self, ids, y):
        grads = self.gradients(ids, y)
        norm = np.sqrt(sum((g**2).sum() for g in grads))  # of the dense embedding gradient: repeated ids summed
        self.clipped += norm > CLIP
        grads = [g * CLIP / max(norm, CLIP) for g in grads]
        for i, g in enumerate(grads):
            w = self.params[i] - LR * WD * self.params[i] - LR * g
            if self.averaging:
                mask = self.masks[i]
                n = (self.counts[i] + 1) * (1.0 if mask is None else mask)
                mu = np.where(n <= 2, 1.0, 1.0 / np.maximum(n - 1, 1))
                ax = np.where(mu == 1.0, w, self.averages[i] + mu * (w - self.averages[i]))
                self.averages[i] = ax if mask is None else ax * mask
                self.counts[i] = n
            self.params[i] = w if self.masks[i] is None else w * self.masks[i]

    def rewire(self, i, dropped, grown):
        for array in (self.params[i], self.averages[i], self.counts[i]):
            array.reshape(-1)[dropped] = 0
            array.reshape(-1)[grown] = 0
        self.masks[i].reshape(-1)[dropped] = 0
        self.masks[i].reshape(-1)[grown] = 1


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fifty_averaged_steps_with_two_mask_changes_match_numpy(jit_compile):
    rng = np.random.default_rng(0)
    model = build(jit_compile)
    embedding_mw, kernel_mw = ks.sparsity.collect(model)
    bias = model.layers[-1].bias
    ref = NumpySNTASGD(embedding_mw.variable.numpy(), kernel_mw.variable.numpy(), bias.numpy(), [embedding_mw.mask.numpy(), kernel_mw.mask.numpy()])
    optimizer = model.optimizer
    batches = [(rng.integers(0, V, (B, T)).astype("int32"), rng.normal(size=(B, U)).astype("float32")) for _ in range(56)]
    for step, (ids, y) in enumerate(batches):
        if step == 6:
            optimizer.start_averaging()
            ref.averaging = True
        if step in (20, 37):  # two topology changes while averaging
            for i, mw in enumerate((embedding_mw, kernel_mw)):
                mask = mw.mask.numpy()
                active, free = np.flatnonzero(mask), np.flatnonzero(mask == 0)
                dropped = rng.choice(active, 3, replace=False)
                grown = np.concatenate([rng.choice(free, 2, replace=False), dropped[:1]])
                rewire(mw, Change.from_positions(mask, dropped, grown), optimizer)
                ref.rewire(i, dropped, grown)
        model.train_on_batch(ids, y)
        ref.step(ids.astype(int), y.astype(np.float64))
    assert optimizer.averaging and optimizer.averaging_start == 6
    assert ref.clipped > 20
    averages = dict((id(v), a) for v, a in optimizer.averages())
    for i, variable in enumerate((embedding_mw.variable, kernel_mw.variable, bias)):
        np.testing.assert_allclose(variable.numpy(), ref.params[i], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(averages[id(variable)].numpy(), ref.averages[i], rtol=1e-6, atol=1e-7)
    for mw in (embedding_mw, kernel_mw):
        inactive = mw.mask.numpy() == 0
        assert np.all(mw.variable.numpy()[inactive] == 0)
        assert np.all(averages[id(mw.variable)].numpy()[inactive] == 0)


def test_before_averaging_it_is_plain_sgd():
    x = np.random.default_rng(1).integers(0, V, (B, T)).astype("int32")
    y = np.ones((B, U), "float32")
    ours, sgd = build(False), build(False)
    sgd.compile(keras_private.exact_gradient_clipping(keras.optimizers.SGD(LR, weight_decay=WD, global_clipnorm=CLIP)), "mse")
    sgd.set_weights(ours.get_weights())
    for _ in range(5):
        ours.train_on_batch(x, y)
        sgd.train_on_batch(x, y)
    for a, b in zip(ours.trainable_variables, sgd.trainable_variables):
        # The same operations in one fused pass (and the norm summed in another order): equal to float rounding.
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(a.numpy() == 0, b.numpy() == 0)
    assert not ours.optimizer.averaging


def test_averaged_weights_swaps_in_averages_and_restores_raw_weights_bit_exactly():
    rng = np.random.default_rng(2)
    model = build(False)
    for step in range(8):
        if step == 3:
            model.optimizer.start_averaging()
        model.train_on_batch(rng.integers(0, V, (B, T)).astype("int32"), rng.normal(size=(B, U)).astype("float32"))
    raw = [v.numpy().copy() for v in model.trainable_variables]
    averages = {id(v): a.numpy() for v, a in model.optimizer.averages()}
    with ks.optimizers.averaged_weights(model) as swapped:
        assert swapped
        for v, r in zip(model.trainable_variables, raw):
            np.testing.assert_array_equal(v.numpy(), averages[id(v)])
            assert not np.array_equal(v.numpy(), r)
    for v, r in zip(model.trainable_variables, raw):
        np.testing.assert_array_equal(v.numpy(), r)


def test_averaged_weights_is_a_no_op_before_the_switch():
    model = build(False)
    model.train_on_batch(np.zeros((B, T), "int32"), np.zeros((B, U), "float32"))
    raw = [v.numpy().copy() for v in model.trainable_variables]
    with ks.optimizers.averaged_weights(model) as swapped:
        assert not swapped
        for v, r in zip(model.trainable_variables, raw):
            np.testing.assert_array_equal(v.numpy(), r)


def test_saved_model_keeps_optimizer_state_and_config(tmp_path):
    model = build(False)
    model.train_on_batch(np.zeros((B, T), "int32"), np.zeros((B, U), "float32"))
    model.optimizer.start_averaging()
    model.train_on_batch(np.ones((B, T), "int32"), np.ones((B, U), "float32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, ks.optimizers.SNTASGD)
    assert loaded.optimizer.averaging and loaded.optimizer.averaging_start == 1
    for (v, a), (lv, la) in zip(model.optimizer.averages(), loaded.optimizer.averages()):
        np.testing.assert_array_equal(a.numpy(), la.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": -1.0}, "learning_rate must be positive"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"weight_decay": -0.1}, "weight_decay must be non-negative"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ks.optimizers.SNTASGD(**kwargs)


def test_gradient_momentum_is_the_momentum_buffer_of_the_gradients_and_leaves_the_update_alone():
    beta, lr = 0.9, 0.1
    model = keras.Sequential([keras.Input((D,), batch_size=B), ks.layers.MaskedDense(U)])
    ks.sparsity.initialize(model, 0.5, seed=0)
    model.compile(ks.optimizers.SNTASGD(lr, gradient_momentum=beta), "mse")
    rng = np.random.default_rng(0)
    reference = None
    for _ in range(3):
        x, y = rng.normal(size=(B, D)).astype("float32"), rng.normal(size=(B, U)).astype("float32")
        with tf.GradientTape() as tape:
            loss = keras.losses.mean_squared_error(y, model(x))
            loss = keras.ops.mean(loss)
        grads = [np.asarray(g) for g in tape.gradient(loss, [v.value for v in model.trainable_variables])]
        before = [v.numpy() for v in model.trainable_variables]
        model.train_on_batch(x, y)
        reference = grads if reference is None else [beta * m + g for m, g in zip(reference, grads)]
        mask = model.layers[0].masked_weights[0].mask.numpy()
        for variable, old, g, m in zip(model.trainable_variables, before, grads, (mask, 1.0)):
            np.testing.assert_allclose(variable.numpy(), (old - lr * g) * m, rtol=1e-5, atol=1e-6)  # plain (masked) SGD step
    slots = model.optimizer.momentums
    for slot, m in zip(slots, reference):
        np.testing.assert_allclose(slot.numpy(), m, rtol=1e-5, atol=1e-6)
    config = model.optimizer.get_config()
    assert ks.optimizers.SNTASGD.from_config(config).gradient_momentum == beta


def test_snfs_growth_reads_the_gradient_momentum_of_sntasgd():
    from keras_selfish.sparsity.rewire import momentum_slot

    model = keras.Sequential([keras.Input((D,), batch_size=B), ks.layers.MaskedDense(U)])
    plain = ks.optimizers.SNTASGD(0.1)
    plain.build(model.trainable_variables)
    with pytest.raises(ValueError, match="keeps no momentum"):
        momentum_slot(plain, model.trainable_variables[0])
    keeping = ks.optimizers.SNTASGD(0.1, gradient_momentum=0.9)
    keeping.build(model.trainable_variables)
    assert momentum_slot(keeping, model.trainable_variables[0]) is keeping.momentums[0]
    with pytest.raises(ValueError, match="gradient_momentum"):
        ks.optimizers.SNTASGD(0.1, gradient_momentum=1.0)

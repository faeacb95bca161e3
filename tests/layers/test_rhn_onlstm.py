"""RHN and ON-LSTM against numpy references; masks, gate layout, serialisation, gradients."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from tests import numpy_reference


def sparse_random(layer, rng, density=0.5):
    """Random weights and masks (inactive weights zero, as after `initialize`)."""
    for v in layer.trainable_variables:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
    for mw in layer.masked_weights:
        mw.mask.assign((rng.random(mw.shape) < density).astype("float32"))
    ks.sparsity.apply_masks(layer)


@pytest.mark.parametrize("couple_carry", [True, False])
def test_rhn_matches_numpy(rng, couple_carry):
    x = rng.normal(size=(3, 5, 4)).astype("float32")
    layer = ks.layers.RHN(6, depth=3, couple_carry=couple_carry, return_sequences=True, return_state=True)
    layer(x)
    sparse_random(layer, rng)
    outputs, state = layer(x)
    cell = layer.cell
    expected, s = numpy_reference.rhn(x, cell.kernel.numpy(), [k.numpy() for k in cell.recurrent_kernels], cell.bias.numpy(), couple_carry)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, s, rtol=1e-5, atol=1e-5)
    gates = 2 if couple_carry else 3
    assert [mw.shape for mw in layer.masked_weights] == [(4, gates * 6)] + [(6, gates * 6)] * 3
    assert layer.masked_weights[0].gate_names == (("h", "t") if couple_carry else ("h", "t", "c"))


def test_onlstm_matches_numpy_and_exposes_unequal_gate_blocks(rng):
    x = rng.normal(size=(2, 4, 3)).astype("float32")
    layer = ks.layers.ONLSTM(8, chunk_size=4, return_sequences=True, return_state=True)
    layer(x)
    sparse_random(layer, rng)
    outputs, h, c = layer(x)
    cell = layer.cell
    expected, eh, ec = numpy_reference.onlstm(x, cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy(), 4)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, ec, rtol=1e-5, atol=1e-5)
    rows = ks.sparsity.summary(layer, print_fn=None)
    assert [g["size"] for g in rows[1]["gates"]] == [8 * 2, 8 * 2] + [8 * 8] * 4
    assert rows[1]["gates"][0]["gate"] == "master_f"


def test_onlstm_gate_wise_update_keeps_every_unequal_block_count(rng):
    layer = ks.layers.ONLSTM(8, chunk_size=4)
    layer(np.zeros((1, 2, 3), "float32"))
    ks.sparsity.initialize(layer, 0.5, seed=0)
    mw = layer.masked_weights[1]
    mask = mw.mask.numpy()
    dropped, grown = ks.sparsity.topology.update_matrix(mw.variable.numpy(), mask, 0.5, rng=rng, gate_sections=mw.gate_sections, gate_wise=True)
    new = mask.reshape(-1).copy()
    new[dropped] = 0
    new[grown] = 1
    assert [b.sum() for b in mw.split_gates(new.reshape(mask.shape))] == [b.sum() for b in mw.split_gates(mask)]


@pytest.mark.parametrize("layer_fn", [lambda: ks.layers.RHN(4, depth=2, dropout=0.2, recurrent_dropout=0.2), lambda: ks.layers.ONLSTM(4, chunk_size=2, weight_dropout=0.3)])
def test_round_trip_and_inactive_weights_stay_zero_in_training(tmp_path, layer_fn):
    model = keras.Sequential([keras.Input((5, 3)), layer_fn(), keras.layers.Dense(2)])
    ks.sparsity.initialize(model, 0.4, seed=0)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), "mse")
    x, y = np.random.default_rng(0).normal(size=(8, 5, 3)), np.ones((8, 2))
    model.fit(x, y, epochs=2, verbose=0)
    for mw in ks.sparsity.collect(model):
        assert np.all(mw.variable.numpy()[mw.mask.numpy() == 0] == 0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert [int(m.mask.numpy().sum()) for m in ks.sparsity.collect(loaded)] == [int(m.mask.numpy().sum()) for m in ks.sparsity.collect(model)]


@pytest.mark.parametrize("padding_mask", [False, True], ids=["fused_loop", "stepped_loop"])
def test_weight_drop_uses_one_dropconnect_mask_per_sequence(rng, padding_mask):
    # A padding mask (all steps valid) sends the layer through the stepped loop instead of the fused one.
    layer = ks.layers.SparseLSTM(4, weight_dropout=0.5, return_sequences=True, seed=3)
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    mask = np.ones((2, 6), bool) if padding_mask else None
    layer(x)
    cell = layer.cell
    seed_state = cell.seed_generator.state.numpy().copy()
    dropped = keras.ops.convert_to_numpy(cell.sequence_weights(training=True))  # the draw the next call makes
    cell.seed_generator.state.assign(seed_state)
    trained = keras.ops.convert_to_numpy(layer(x, training=True, mask=mask))
    recurrent_kernel = cell.recurrent_kernel.numpy()
    assert 0 < np.mean(dropped == 0) < 1 and np.allclose(dropped[dropped != 0], 2 * recurrent_kernel[dropped != 0])
    ones = np.ones_like
    kernel = cell.kernel.numpy()
    expected, _, _ = numpy_reference.lstm(x, kernel, dropped, cell.bias.numpy(), ones(kernel), ones(dropped))
    np.testing.assert_allclose(trained, expected, rtol=1e-5, atol=1e-5)  # the same dropped kernel at every step
    np.testing.assert_array_equal(layer(x, training=False), layer(x, training=False))
    assert layer.get_config()["weight_dropout"] == 0.5


def test_bad_cell_arguments_are_rejected():
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        ks.layers.ONLSTMCell(10, chunk_size=3)
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        ks.layers.RHNCell(4, depth=0)
    with pytest.raises(ValueError, match=r"weight_dropout must be in \[0, 1\)"):
        ks.layers.SparseLSTMCell(4, weight_dropout=1.0)

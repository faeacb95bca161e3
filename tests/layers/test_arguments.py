"""Sizes and rates of every layer (and of DropAndGrow) are checked at construction, by name."""

import numpy as np
import pytest

import keras_selfish as ks

# Each constructor with valid arguments; `units` is the size argument under test.
RECURRENT = {
    "SparseLSTM": ks.layers.SparseLSTM,
    "SparseLSTMCell": ks.layers.SparseLSTMCell,
    "SparseGRU": ks.layers.SparseGRU,
    "SparseGRUCell": ks.layers.SparseGRUCell,
    "RHN": lambda units, **kw: ks.layers.RHN(units, depth=2, **kw),
    "RHNCell": lambda units, **kw: ks.layers.RHNCell(units, depth=2, **kw),
    "ONLSTM": lambda units, **kw: ks.layers.ONLSTM(units, chunk_size=2, **kw),
    "ONLSTMCell": lambda units, **kw: ks.layers.ONLSTMCell(units, chunk_size=2, **kw),
}
SIZED = {
    **{name: (make, "units") for name, make in RECURRENT.items()},
    "MaskedDense": (ks.layers.MaskedDense, "units"),
    "MaskedEmbedding.output_dim": (lambda n: ks.layers.MaskedEmbedding(40, n), "output_dim"),
    "MaskedEmbedding.input_dim": (lambda n: ks.layers.MaskedEmbedding(n, 8), "input_dim"),
    "RHN.depth": (lambda n: ks.layers.RHN(8, depth=n), "depth"),
    "ONLSTM.chunk_size": (lambda n: ks.layers.ONLSTM(8, chunk_size=n), "chunk_size"),
}
RATES = {
    **{f"{name}.{arg}": (lambda rate, make=make, arg=arg: make(8, **{arg: rate}), arg) for name, make in RECURRENT.items() for arg in ("dropout", "recurrent_dropout", "weight_dropout")},
    "MaskedEmbedding.word_dropout": (lambda rate: ks.layers.MaskedEmbedding(40, 8, word_dropout=rate), "word_dropout"),
    "LockedDropout.rate": (ks.layers.LockedDropout, "rate"),
}


def stored(layer, argument):
    return getattr(layer.cell if hasattr(layer, "cell") else layer, argument)


@pytest.mark.parametrize("name", sorted(SIZED))
def test_sizes_must_be_positive_integers_and_errors_name_the_argument(name):
    make, argument = SIZED[name]
    for bad in ["8", 8.5, 8.0, True, None]:  # not integers: TypeError at construction
        with pytest.raises(TypeError, match=rf"^{argument} must be a positive integer, got {repr(bad)!s} \("):
            make(bad)
    for bad in [0, -4]:
        with pytest.raises(ValueError, match=rf"^{argument} must be a positive integer, got {bad}\.$"):
            make(bad)
    value = stored(make(np.int64(8)), argument)
    assert value == 8 and type(value) is int


@pytest.mark.parametrize("name", sorted(RATES))
def test_rates_must_be_numbers_in_zero_one_and_are_not_clamped(name):
    make, argument = RATES[name]
    for bad in [1.0, 1.5, -0.1, float("nan")]:
        with pytest.raises(ValueError, match=rf"^{argument} must be in \[0, 1\), got "):
            make(bad)
    with pytest.raises(TypeError, match=rf"^{argument} must be a number in \[0, 1\), got '0.5' \(str\)"):
        make("0.5")
    value = stored(make(np.float32(0.25)), argument)
    assert value == 0.25 and type(value) is float


@pytest.mark.parametrize("callback", [ks.callbacks.DropAndGrow, ks.callbacks.SelfishRNN])
def test_drop_fraction_of_the_wrong_type_is_a_type_error(callback):
    with pytest.raises(TypeError, match=r"^drop_fraction must be a number in \(0, 1\), got '0.5' \(str\)"):
        callback(drop_fraction="0.5")
    with pytest.raises(ValueError, match=r"^drop_fraction must be in \(0, 1\), got nan"):
        callback(drop_fraction=float("nan"))
    assert callback(drop_fraction=np.float64(0.3), verbose=0).drop_fraction == 0.3


def test_final_drop_fraction_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"^final_drop_fraction must be a number in \(0, 1\), got None \(NoneType\)"):
        ks.callbacks.DropAndGrow(final_drop_fraction=None)

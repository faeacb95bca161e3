"""Exported SavedModel and TFLite artifacts compute what Keras computes; sparse storage; errors."""

import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_selfish as ks

VOCAB, WIDTH, LENGTH = 60, 16, 200
STEPPED = 50  # tokens run through the SavedModel step signature


def randomised(model, density):
    """Masks at `density` and weights drawn at scale 0.4, so every gate and state term
    visibly moves the logits (a few training steps leave some, e.g. RHN's carry gate,
    too small for a 1e-4 comparison to see)."""
    if density < 1.0:
        ks.sparsity.initialize(model, density, seed=0)
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(scale=0.4, size=variable.shape).astype("float32"))
    ks.sparsity.apply_masks(model)
    return model


def trained(model, density):
    if density < 1.0:
        ks.sparsity.initialize(model, density, seed=0)
    model.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = (rng.integers(0, VOCAB, (16, 1)) + np.arange(10)) % VOCAB
    model.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=3, verbose=0)  # peaked logits, so perplexity comparisons mean something
    return model


def stock_stack(rnn, form):
    """Stock Keras layers only: Embedding -> LSTM or GRU(reset_after=True) -> Dense."""
    recurrent = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[rnn](WIDTH, return_sequences=True)
    layers = [keras.layers.Embedding(VOCAB, WIDTH), recurrent, keras.layers.Dense(VOCAB)]
    ids = keras.Input((None,), dtype="int32")
    if form == "sequential":
        return keras.Sequential([ids, *layers])
    x = ids
    for layer in layers:
        x = layer(x)
    return keras.Model(ids, x)


def build(arch, density, weights=trained):
    vocabulary = [f"w{i}" for i in range(VOCAB)]
    if arch == "gru":
        model = keras.Sequential([
            keras.Input((None,), dtype="int32"),
            ks.layers.MaskedEmbedding(VOCAB, WIDTH),
            ks.layers.SparseGRU(WIDTH, return_sequences=True),
            keras.layers.Dropout(0.1),
            ks.layers.MaskedDense(VOCAB),
        ])
    elif arch.startswith("keras_"):
        model = stock_stack(*arch.split("_")[1:])
    else:
        extra = {
            "lstm": {},
            "rhn": {"depth": 2, "tied": True},
            "rhn_uncoupled": {"depth": 2, "couple": False},
            "awd_lstm": {"tied": True, "wdrop": 0.2, "dropoute": 0.1},
            "onlstm": {"chunk_size": 4, "wdrop": 0.2},
        }[arch]
        model = ks.models.language_model(arch.split("_uncoupled")[0], VOCAB, emsize=WIDTH, nhid=WIDTH, nlayers=2, vocabulary=vocabulary, batch_size=1, seq_len=9, **extra)
    return weights(model, density)


def keras_logits(model, ids):
    return keras.ops.convert_to_numpy(model(ids[None], training=False))[0]


def perplexity(logits, ids):
    logits = logits[:-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, VOCAB, LENGTH).astype("int32")


def stepped(step_signature, ids):
    """Logits of `ids` from the SavedModel `step` signature, one token at a time with carried states."""
    inputs = step_signature.structured_input_signature[1]
    states = {name: tf.zeros([1, spec.shape[1]]) for name, spec in inputs.items() if name.startswith("state_")}
    logits = []
    for token in ids:
        outputs = step_signature(token=tf.constant([token]), **states)
        states = {name: outputs[name] for name in states}
        logits.append(outputs["logits"].numpy()[0])
    return np.stack(logits)


PARITY_CASES = [
    *[(arch, density) for arch in ("lstm", "gru", "rhn", "awd_lstm") for density in (0.33, 1.0)],
    ("onlstm", 0.33),
    ("rhn_uncoupled", 0.33),
    *[(f"keras_{rnn}_{form}", 1.0) for rnn in ("lstm", "gru") for form in ("sequential", "functional")],
]


@pytest.mark.parametrize("arch, density", PARITY_CASES, ids=[f"{a}-{'dense' if d == 1.0 else 'sparse'}" for a, d in PARITY_CASES])
def test_saved_model_and_float_tflite_match_keras(tmp_path, ids, arch, density):
    model = build(arch, density, weights=randomised)
    expected = keras_logits(model, ids)
    assert expected.std() > 0.3  # logits that a wrong term moves by far more than 1e-4
    loaded = tf.saved_model.load(str(ks.export.saved_model(model, tmp_path / "sm")))
    scored = loaded.signatures["score"](ids=tf.constant(ids[None]))["logits"].numpy()[0]
    np.testing.assert_allclose(scored, expected, atol=1e-4)
    np.testing.assert_allclose(stepped(loaded.signatures["step"], ids[:STEPPED]), scored[:STEPPED], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = ks.export.tflite(model, tmp_path / "lm.tflite")
    runner = ks.export.TFLiteRunner(path)
    runner.reset()
    stepped_tflite = np.stack([runner.step(t) for t in ids])
    np.testing.assert_allclose(stepped_tflite, expected, atol=1e-4)
    keras_ppl = perplexity(expected, ids)
    assert abs(runner.score(ids) / keras_ppl - 1) < 1e-3


def test_int8_perplexity_within_two_percent_and_dynamic_quantisation(tmp_path, ids):
    model = build("lstm", 0.33)
    keras_ppl = perplexity(keras_logits(model, ids), ids)
    for quantize in ("dynamic", "int8"):
        path = ks.export.tflite(model, tmp_path / f"{quantize}.tflite", quantize=quantize, representative_ids=ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ppl = ks.export.TFLiteRunner(path).score(ids)
        assert abs(ppl / keras_ppl - 1) < 0.02, (quantize, ppl, keras_ppl)


def test_masked_fully_connected_weights_are_stored_sparse_and_small(tmp_path):
    model = build("lstm", 0.33)
    weights = ks.export.weight_tensors(ks.export.tflite(model, tmp_path / "lm.tflite"))
    matrices = [w for w in weights if w["op"] in ("FULLY_CONNECTED", "DENSIFY")]
    assert len(matrices) == 2 + 1  # [input; recurrent] kernel of 2 layers (one FULLY_CONNECTED each), softmax
    for w in matrices:  # unstructured: sparse-encoded, densified at run time
        assert w["sparse"] and w["block"] is None and w["op"] == "DENSIFY", w
        assert w["bytes"] <= 0.45 * w["dense_bytes"], w
    tables = [w for w in weights if w["op"] == "GATHER"]  # TFLite has no sparse GATHER table: row-compressed values
    assert not any(w["sparse"] for w in tables) and sum(w["bytes"] for w in tables) < 0.5 * VOCAB * WIDTH * 4
    dense = ks.export.weight_tensors(ks.export.tflite(model, tmp_path / "dense.tflite", sparse=False))
    assert not any(w["sparse"] for w in dense)


def test_matrices_wider_than_255_inputs_are_split_into_one_byte_index_blocks(tmp_path, ids):
    model = ks.models.language_model("lstm", VOCAB, emsize=300, nhid=300, nlayers=1, batch_size=1, seq_len=4)
    ks.sparsity.initialize(model, 0.33, seed=0)
    path = ks.export.tflite(model, tmp_path / "wide.tflite")
    matrices = [w for w in ks.export.weight_tensors(path) if w["op"] in ("FULLY_CONNECTED", "DENSIFY")]
    assert len(matrices) == 3 + 2  # [kernel; recurrent kernel] as 255 + 255 + 90 inputs, softmax as 255 + 45
    assert all(w["sparse"] and w["bytes"] <= 0.45 * w["dense_bytes"] for w in matrices), matrices
    runner = ks.export.TFLiteRunner(path)
    stepped = np.stack([runner.step(t) for t in ids[:30]])
    np.testing.assert_allclose(stepped, keras_logits(model, ids[:30]), atol=1e-4)


def test_saved_model_has_no_masks_and_loads_without_keras_selfish(tmp_path, ids):
    model = build("awd_lstm", 0.33)
    path = ks.export.saved_model(model, tmp_path / "sm")
    np.save(tmp_path / "expected.npy", keras_logits(model, ids[:20]))
    np.save(tmp_path / "ids.npy", ids[:20])
    script = f"""
import sys
sys.modules["keras_selfish"] = None  # not importable
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(path)!r})
names = [name for name, _ in tf.train.list_variables({str(path / 'variables' / 'variables')!r})]
assert names and not any("mask" in n for n in names), names
ids = np.load({str(tmp_path / 'ids.npy')!r})
logits = loaded.signatures["score"](ids=tf.constant(ids[None]))["logits"].numpy()[0]
assert np.abs(logits - np.load({str(tmp_path / 'expected.npy')!r})).max() < 1e-4
step = loaded.signatures["step"]
print(sorted(step.structured_input_signature[1]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'state_0'" in result.stdout and "'token'" in result.stdout
    assert (path / "assets.extra" / "vocab.txt").read_text().split("\n")[0] == "w0"


def test_runner_generates_reproducibly_from_text(tmp_path):
    path = ks.export.tflite(build("lstm", 0.33), tmp_path / "lm.tflite")
    runner = ks.export.TFLiteRunner(path, num_threads=2)
    first = runner.generate("w1 w2 w3", 8, temperature=0.7, seed=3)
    assert first == runner.generate("w1 w2 w3", 8, temperature=0.7, seed=3)
    assert len(first.split()) == 8 and all(w in runner.vocabulary for w in first.split())


def test_export_errors_name_the_problem(tmp_path):
    odd = keras.Sequential([keras.Input((None,), dtype="int32"), ks.layers.MaskedEmbedding(10, 4), keras.layers.Conv1D(4, 2, name="conv"), ks.layers.MaskedDense(10)])
    with pytest.raises(ValueError, match="cannot express layer 'conv'"):
        ks.export.tflite(odd, tmp_path / "x.tflite")
    blocker = tmp_path / "file"
    blocker.write_text("")
    dense = build("lstm", 1.0)
    with pytest.raises(PermissionError, match=str(blocker / "x.tflite")):
        ks.export.tflite(dense, blocker / "x.tflite")
    with pytest.warns(UserWarning, match="has no sparse weights; exporting dense"):
        ks.export.tflite(dense, tmp_path / "dense.tflite", sparse=True)
    with pytest.raises(ValueError, match="needs representative_ids"):
        ks.export.tflite(dense, tmp_path / "q.tflite", quantize="int8")

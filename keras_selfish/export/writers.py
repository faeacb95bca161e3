"""SavedModel and TFLite writers for sparse language models."""

import os
import pathlib
import warnings

import numpy as np
import tensorflow as tf

from keras_selfish.export.inference import InferenceModel
from keras_selfish.files import atomic_write
from keras_selfish.sparsity.masked_weight import collect

QUANTIZE = (None, "dynamic", "int8")


def _writable(path):
    """Create the parent directory and check that `path` can be written, or raise naming it."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".ks_write_probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"Cannot write the export to {path}: {e.strerror or e}. Choose a writable path.") from None
    return path


def _write_vocabulary(vocabulary, path):
    if vocabulary:
        pathlib.Path(path).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")


def _step_function(inference, batch_size):
    specs = [tf.TensorSpec([batch_size], tf.int32, name="token")]
    specs += [tf.TensorSpec([batch_size, size], tf.float32, name=f"state_{i}") for i, size in enumerate(inference.state_sizes)]

    @tf.function(input_signature=specs)
    def step(token, *states):
        logits, new_states = inference.step(token, list(states))
        return {"logits": logits, **{f"state_{i}": s for i, s in enumerate(new_states)}}

    return step


def saved_model(model, path):
    """Write a SavedModel with the masks folded into the weights.

    Signatures (also usable from C++/TF Serving; keras_selfish is not needed to load):

    * `score` (and `serving_default`): `ids (batch, time) int32` -> `logits (batch,
      time, vocab)`, from zero states.
    * `step`: `token (batch,) int32, state_0, state_1, ... (batch, units)` ->
      `logits (batch, vocab)` and the new `state_i`: streaming generation.

    The vocabulary (if the model has one) goes to `assets.extra/vocab.txt`.

    Returns:
        the path.
    """
    inference = InferenceModel.from_keras(model)
    path = _writable(pathlib.Path(path) / "saved_model.pb").parent

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def score(ids):
        return {"logits": inference.score(ids)}

    inference.score_signature = score
    inference.step_signature = _step_function(inference, None)
    tf.saved_model.save(inference, str(path), signatures={"serving_default": score, "score": score, "step": inference.step_signature})
    (path / "assets.extra").mkdir(exist_ok=True)
    _write_vocabulary(inference.vocabulary, path / "assets.extra" / "vocab.txt")
    return path


def _has_sparse_weights(model):
    return any(np.any(mw.mask.numpy() == 0) for mw in collect(model))


def _representative_data(inference, ids, batch_size, samples):
    """`(token, states...)` inputs met while running the model over `ids`, for int8 calibration."""
    ids = np.asarray(ids, np.int32).reshape(-1)[: samples * batch_size]
    tokens = ids[: len(ids) // batch_size * batch_size].reshape(batch_size, -1).T
    states = inference.zero_states(batch_size)
    for token in tokens:
        yield {"token": token, **{f"state_{i}": s.numpy() for i, s in enumerate(states)}}
        _, states = inference.step(tf.constant(token), states)


def _flatbuffer(model, quantize, sparse, representative_ids, batch_size, calibration_steps):
    """`(flatbuffer bytes, InferenceModel)` of the single-step model in the (sparse or dense) layout."""
    inference = InferenceModel.from_keras(model, sparse=sparse, quantize=quantize)
    step = _step_function(inference, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], inference)
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "int8":
        converter.representative_dataset = lambda: _representative_data(inference, representative_ids, batch_size, calibration_steps)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = optimizations
    return converter.convert(), inference


def tflite(model, path, quantize=None, sparse=True, representative_ids=None, batch_size=1, calibration_steps=200):
    """Write a single-step TFLite model: `(token, states) -> (logits, new states)`.

    Every input, recurrent and softmax matrix is a FULLY_CONNECTED weight (all gates
    of a cell in one; a layer's input and recurrent matrices stacked into one, run on
    the concatenated `[x, h]`). With `sparse=True` the converter sparse-encodes a weight of
    >= 30% sparsity:

    * block-sparse, when its mask is made of 1 x 4 blocks along the inputs (float)
      or 1 x 16 blocks (dynamic-range and int8): TFLite runs it sparse (no DENSIFY
      op; LiteRT's built-in kernels, not XNNPack), so it is faster and smaller. Its
      inputs are zero-padded to whole blocks.
    * otherwise unstructured, with a DENSIFY op: the file shrinks, latency and
      runtime memory do not improve. Such a matrix with more than 255 inputs is
      stored as FULLY_CONNECTED blocks of <= 255 inputs, summed, so its indices take
      one byte each (about 0.42x the dense bytes at density 0.33 instead of 0.5x).

    A masked embedding table is stored row-compressed (its active blocks plus their
    column indices, rebuilt per token with GATHER/SCATTER_ND; see `EmbeddingTable`)
    when that is smaller than the dense table. For a tied model the softmax weight
    is the sparse FULLY_CONNECTED weight and the lookup reads the compressed table.
    A sparse file is never larger than the dense one: when the dense layout
    converts to fewer bytes (tiny models, where index overheads dominate), that
    is written instead, with a warning.

    Args:
        model: a trained Keras language model (see `InferenceModel`).
        path: the `.tflite` file; the vocabulary goes next to it as `<path>.vocab.txt`.
        quantize: None (float32), "dynamic" (int8 weights, float activations) or
            "int8" (weights and activations; needs `representative_ids`).
        sparse: sparse-encode the sparse weights. With a model that has no sparse
            weight it warns and exports dense.
        representative_ids: token ids of real text (e.g. the validation split) for
            int8 calibration.
        batch_size: static batch size of the step.
        calibration_steps: steps of text run for calibration.

    Returns:
        the path.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"Unknown quantize={quantize!r}; use one of {list(QUANTIZE)}.")
    if quantize == "int8" and representative_ids is None:
        raise ValueError("quantize='int8' needs representative_ids: token ids of real text to calibrate activation ranges.")
    path = _writable(path)
    if sparse and not _has_sparse_weights(model):
        warnings.warn(f"sparse=True, but model {model.name!r} has no sparse weights; exporting dense.", stacklevel=2)
        sparse = False
    calibration = (representative_ids, batch_size, calibration_steps)
    flatbuffer, inference = _flatbuffer(model, quantize, sparse, *calibration)
    if sparse:
        dense, _ = _flatbuffer(model, quantize, False, *calibration)
        if len(dense) <= len(flatbuffer):
            warnings.warn(f"The sparse layout of {model.name!r} takes {len(flatbuffer):,} bytes, the dense one {len(dense):,}; writing the dense one.", stacklevel=2)
            flatbuffer = dense
    atomic_write(path, lambda temporary: temporary.write_bytes(flatbuffer))
    _write_vocabulary(inference.vocabulary, f"{path}.vocab.txt")
    return path

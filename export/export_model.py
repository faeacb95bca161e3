r"""Export a trained language model to a pruned SavedModel and TFLite variants.

    python -m export.export_model --model_dir=runs/tiny_ptb
    python -m export.export_model --model=lm.keras --output_dir=out --variants=float,int8

Reads `<model_dir>/model.keras` (or `--model`), writes to `<model_dir>/export` (or
`--output_dir`): `saved_model/`, `float.tflite` (sparse-encoded), `float_dense.tflite`
(for comparison), `dynamic.tflite` and `int8.tflite` (calibrated on the validation
split), and prints a table of file sizes, whether the weights stay sparse at run time
(block-sparse, no DENSIFY) and how many weights are stored sparse.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402

import keras_selfish as ks  # noqa: E402
from keras_selfish.data import corpora  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("saved_model", "float", "float_dense", "dynamic", "int8")

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A train_lm output directory (uses its model.keras and metrics.json).")
flags.DEFINE_string("model", None, "A .keras language model (default: <model_dir>/model.keras).")
flags.DEFINE_string("output_dir", None, "Where to write (default: <model dir>/export).")
flags.DEFINE_list("variants", list(VARIANTS), f"Artifacts to write: {', '.join(VARIANTS)}.")
flags.DEFINE_string("corpus", None, "Corpus for int8 calibration (default: the run's, else ptb).")
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data"), "Directory with <corpus>/valid.txt; empty: download.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_integer("calibration_steps", 200, "Validation tokens run for int8 calibration.")


def fail(message):
    sys.exit(f"export_model: error: {message}")


def calibration_ids(model, path):
    metrics = path.parent / "metrics.json"
    corpus = FLAGS.corpus or (json.loads(metrics.read_text())["corpus"] if metrics.is_file() else "ptb")
    builder = ks.data.corpus_builder(corpus, FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir)
    return corpora.split_ids(builder, "valid", model.vocabulary)


def size(path):
    path = pathlib.Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = set(FLAGS.variants) - set(VARIANTS)
    if unknown:
        fail(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}.")
    if FLAGS.model is None and FLAGS.model_dir is None:
        fail("pass --model_dir=<train_lm output> or --model=<file.keras>.")
    path = pathlib.Path(FLAGS.model or pathlib.Path(FLAGS.model_dir) / "model.keras")
    if not path.is_file():
        fail(f"{path} does not exist; train first (python -m trainers.train_lm).")
    model = keras.saving.load_model(path)
    output = pathlib.Path(FLAGS.output_dir or path.parent / "export")
    rows = []
    try:
        for variant in FLAGS.variants:
            if variant == "saved_model":
                written = ks.export.saved_model(model, output / "saved_model")
            else:
                quantize = {"dynamic": "dynamic", "int8": "int8"}.get(variant)
                ids = calibration_ids(model, path) if variant == "int8" else None
                written = ks.export.tflite(model, output / f"{variant}.tflite", quantize=quantize, sparse=variant != "float_dense", representative_ids=ids, calibration_steps=FLAGS.calibration_steps)
            weights = ks.export.weight_tensors(written) if variant != "saved_model" else []
            densify = "DENSIFY" in ks.export.operators(written) if variant != "saved_model" else None
            rows.append({"artifact": written.name, "bytes": size(written), "sparse_weights": sum(w["sparse"] for w in weights),
                         "block_sparse": sum(bool(w["block"]) for w in weights), "weights": len(weights), "densify": densify})
    except (ValueError, PermissionError, FileNotFoundError) as e:
        fail(e)
    dense = next((r["bytes"] for r in rows if r["artifact"] == "float_dense.tflite"), None)
    print(f"\n{'artifact':<22} {'size':>12} {'vs dense float':>15} {'block-sparse (no DENSIFY)':>26} {'sparse-encoded weights':>24}")
    for r in rows:
        ratio = f"{r['bytes'] / dense:.3f}" if dense else "-"
        stored = f"{r['sparse_weights']}/{r['weights']}" if r["weights"] else "-"
        blocks = "-" if r["densify"] is None else "yes" if r["block_sparse"] and not r["densify"] else "no"
        print(f"{r['artifact']:<22} {r['bytes']:>12,} {ratio:>15} {blocks:>26} {stored:>24}")
    print(f"written to {output}")


if __name__ == "__main__":
    app.run(main)

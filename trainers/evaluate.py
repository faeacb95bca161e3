r"""Perplexity of a trained language model on a corpus split.

    python -m trainers.evaluate --model_dir=runs/tiny_ptb --split=test

Loads `<model_dir>/model.keras` (written by train_lm: best weights, averaged once
SNT-ASGD averages, with its vocabulary) and scores the split in truncated-BPTT
order with the model's batch shape.
"""

import json
import math
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

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Directory of a train_lm run (holds model.keras and metrics.json).")
flags.DEFINE_string("model", None, "A .keras language model (default: <model_dir>/model.keras).")
flags.DEFINE_enum("split", "test", list(corpora.SPLITS), "Split to score.")
flags.DEFINE_string("corpus", None, "Corpus (default: the run's, from metrics.json).")
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data"), "Directory with <corpus>/{train,valid,test}.txt; empty: download.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_integer("bptt", 35, "Truncated-BPTT length of the evaluation batches.")


def perplexity(model, ids, seq_len):
    """Perplexity of a stateful `LanguageModel` (its own batch size) on the id stream `ids`."""
    dataset = ks.data.lm_batches(ids, model.batch_size, seq_len)
    model.reset_states()
    return math.exp(model.evaluate(dataset, verbose=0))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.model is None and FLAGS.model_dir is None:
        sys.exit("evaluate: error: pass --model_dir=<train_lm output> or --model=<file.keras>.")
    path = pathlib.Path(FLAGS.model or pathlib.Path(FLAGS.model_dir) / "model.keras")
    if not path.is_file():
        sys.exit(f"evaluate: error: {path} does not exist; train first (python -m trainers.train_lm --model_dir=...).")
    corpus = FLAGS.corpus
    metrics_path = path.parent / "metrics.json"
    if corpus is None and metrics_path.is_file():
        corpus = json.loads(metrics_path.read_text())["corpus"]
    try:
        builder = ks.data.corpus_builder(corpus or "ptb", FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"evaluate: error: {e}")
    model = keras.saving.load_model(path)
    model.compile(loss=ks.losses.SparseSoftmaxCrossEntropy())
    ids = corpora.split_ids(builder, FLAGS.split, model.vocabulary)
    print(f"{path}: {FLAGS.split} perplexity {perplexity(model, ids, FLAGS.bptt):.2f}")


if __name__ == "__main__":
    app.run(main)

r"""Run an exported TFLite language model with LiteRT: perplexity, generation, latency.

    python -m export.run_tflite --tflite=runs/tiny_ptb/export/float.tflite --split=test --max_tokens=5000
    python -m export.run_tflite --tflite=... --generate="the company said" --n=20 --seed=0
"""

import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import keras_selfish as ks  # noqa: E402
from keras_selfish.data import corpora  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite", None, "The .tflite file (from export_model or ks.export.tflite).")
flags.DEFINE_enum("split", None, list(corpora.SPLITS), "Score this corpus split (perplexity).")
flags.DEFINE_string("corpus", "ptb", "Corpus of --split.")
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data"), "Directory with <corpus>/<split>.txt; empty: download.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_integer("max_tokens", 0, "Score only the first N tokens (0: all).")
flags.DEFINE_string("generate", None, "Prompt text to continue.")
flags.DEFINE_integer("n", 20, "Tokens to generate.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_integer("seed", None, "Sampling seed.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_enum("kernels", "auto", ["auto", "xnnpack", "builtin"], "LiteRT kernels: auto picks the faster for the file (built-in for block-sparse weights, else XNNPack).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.tflite is None or (FLAGS.split is None and FLAGS.generate is None):
        sys.exit("run_tflite: error: pass --tflite=FILE and --split=valid|test and/or --generate=TEXT.")
    try:
        runner = ks.export.TFLiteRunner(FLAGS.tflite, num_threads=FLAGS.threads, use_xnnpack={"auto": None, "xnnpack": True, "builtin": False}[FLAGS.kernels])
        print(f"{FLAGS.tflite}: {runner.resolver} kernels, {FLAGS.threads} thread(s)")
        if FLAGS.split:
            if runner.vocabulary is None:
                sys.exit(f"run_tflite: error: {FLAGS.tflite}.vocab.txt is missing; it maps the corpus to ids.")
            builder = ks.data.corpus_builder(FLAGS.corpus, FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir)
            ids = corpora.split_ids(builder, FLAGS.split, runner.vocabulary)
            ids = ids[: FLAGS.max_tokens] if FLAGS.max_tokens else ids
            start = time.perf_counter()
            ppl = runner.score(ids)
            ms = 1000 * (time.perf_counter() - start) / max(len(ids) - 1, 1)
            print(f"{FLAGS.split} perplexity {ppl:.2f} over {len(ids):,} tokens | {ms:.3f} ms/token | threads {FLAGS.threads} | {runner.resolver} kernels")
        if FLAGS.generate:
            print(f"{FLAGS.generate} {runner.generate(FLAGS.generate, FLAGS.n, FLAGS.temperature, FLAGS.seed)}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"run_tflite: error: {e}")


if __name__ == "__main__":
    app.run(main)

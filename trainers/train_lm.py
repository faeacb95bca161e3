r"""Train a sparse LSTM language model on a word-level corpus (PTB by default).

    python -m trainers.train_lm                          # tiny quick-start run
    python -m trainers.train_lm --width=200 --steps=500 --density=0.33

Reads `<data_dir>/<corpus>/{train,valid}.txt` (default data_dir: `../shared/data`
next to the repository, if present), builds MaskedEmbedding -> N x SparseLSTM ->
MaskedDense, gives every matrix an exact-count random mask, trains statefully in
truncated-BPTT order, and prints validation perplexity and the sparsity summary.
"""

import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402

import keras_selfish as ks  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", str(DEFAULT_DATA_DIR), "Directory holding <corpus>/train.txt, valid.txt, test.txt.")
flags.DEFINE_enum("corpus", "ptb", ["ptb", "wikitext-2"], "Corpus folder under --data_dir.")
flags.DEFINE_integer("width", 128, "Embedding size and LSTM units.")
flags.DEFINE_integer("layers", 2, "Number of stacked SparseLSTM layers.")
flags.DEFINE_float("density", 0.33, "Fraction of active weights in every masked matrix.")
flags.DEFINE_enum("distribution", "uniform", ["uniform", "er", "erk"], "Initial sparsity distribution.")
flags.DEFINE_integer("steps", 200, "Training steps (batches).")
flags.DEFINE_integer("eval_steps", 20, "Validation batches to score.")
flags.DEFINE_integer("batch_size", 20, "Batch size (parallel streams).")
flags.DEFINE_integer("bptt", 35, "Truncated-BPTT length.")
flags.DEFINE_float("lr", 20.0, "SGD learning rate.")
flags.DEFINE_float("clip", 0.25, "Global gradient-norm clip.")
flags.DEFINE_integer("seed", 1111, "Seed for weights, masks and dropout.")


def fail(message):
    """Exit with one clear line, no traceback."""
    sys.exit(f"train_lm: error: {message}")


def build_model(vocab_size):
    model = keras.Sequential(name="sparse_lstm_lm")
    model.add(keras.Input((FLAGS.bptt,), batch_size=FLAGS.batch_size, dtype="int32"))
    model.add(ks.layers.MaskedEmbedding(vocab_size, FLAGS.width, name="embedding"))
    for i in range(FLAGS.layers):
        model.add(ks.layers.SparseLSTM(FLAGS.width, return_sequences=True, stateful=True, name=f"lstm_{i}"))
    model.add(ks.layers.MaskedDense(vocab_size, name="softmax"))
    return model


def main(argv):
    del argv
    if not 0.0 < FLAGS.density <= 1.0:
        fail(f"--density must be in (0, 1], got {FLAGS.density}.")
    for name in ("width", "layers", "steps", "eval_steps", "batch_size", "bptt"):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be >= 1, got {getattr(FLAGS, name)}.")
    corpus_dir = pathlib.Path(FLAGS.data_dir) / FLAGS.corpus
    if not (corpus_dir / "train.txt").is_file():
        fail(f"no {corpus_dir / 'train.txt'}; pass --data_dir=DIR where DIR/{FLAGS.corpus}/train.txt exists.")

    keras.utils.set_random_seed(FLAGS.seed)
    print(f"reading {corpus_dir}", flush=True)
    train_tokens = ks.data.read_tokens(corpus_dir / "train.txt")
    vocab = ks.data.Vocabulary(train_tokens)
    train = ks.data.lm_batches(vocab.encode(train_tokens), FLAGS.batch_size, FLAGS.bptt)
    valid = ks.data.lm_batches(vocab.encode(ks.data.read_tokens(corpus_dir / "valid.txt")), FLAGS.batch_size, FLAGS.bptt)
    print(f"{len(train_tokens):,} training tokens, vocabulary {len(vocab):,}", flush=True)

    model = build_model(len(vocab))
    ks.sparsity.initialize(model, FLAGS.density, distribution=FLAGS.distribution, seed=FLAGS.seed)
    model.compile(
        optimizer=keras.optimizers.SGD(FLAGS.lr, global_clipnorm=FLAGS.clip),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    history = model.fit(train.take(FLAGS.steps), epochs=1, shuffle=False, verbose=2)
    seconds = time.perf_counter() - start
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()
    valid_loss = model.evaluate(valid.take(FLAGS.eval_steps), verbose=0)
    train_loss = history.history["loss"][-1]
    print(f"trained {FLAGS.steps} steps in {seconds:.1f}s (including graph tracing)")
    print(f"mean train ppl {math.exp(train_loss):.1f}   valid ppl ({FLAGS.eval_steps} batches) {math.exp(valid_loss):.1f}")
    ks.sparsity.summary(model)


if __name__ == "__main__":
    app.run(main)

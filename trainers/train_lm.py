r"""Train a sparse (Selfish-RNN) word-level language model; resumable.

    python -m trainers.train_lm                              # quick start: preset tiny_ptb
    python -m trainers.train_lm --preset=lstm_ptb_2x1500     # the paper's stacked LSTM
    python -m trainers.train_lm --preset=small_ptb --density=0.2 --growth=gradient

`--preset` fills every setting (ks.models.PRESETS); flags given on the command line
override it. The run is `ks.runs.train` (also what trainers.compare runs): it trains with `model.fit` and the library's callbacks
(SelfishRNN-style DropAndGrow, NonMonotonicTrigger + SNT-ASGD, averaged-weight
validation), writes TensorBoard logs, checkpoints to `<model_dir>/checkpoints`
(atomically, at every epoch end and every `--checkpoint_every` batches), keeps the
weights with the best validation perplexity (averaged weights once SNT-ASGD
averages), and ends with the test perplexity, the sparsity summary and
`<model_dir>/metrics.json`, `<model_dir>/history.json` and plots in `<model_dir>/plots/`.

Run the same command again after a crash (even `kill -9` mid-epoch): it resumes from
the last checkpoint, with weights, masks, optimizer state, trigger history,
drop-rate schedule, position in the epoch and RNG state restored
(ks.training.fit_resumable). A finished run just reports its results again. The
settings are fixed when the run is created (`<model_dir>/config.json`, written once): a
re-run may change only --epochs (a larger value trains on; the drop-rate cosine keeps
the run's original horizon) and --data_dir, --tfds_dir, --checkpoint_every,
--log_every, --jit_compile, --distribution; any other difference stops it with one line before anything is written.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import keras_selfish as ks  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny_ptb", f"Named configuration; one of {sorted(ks.models.PRESETS)}.")
flags.DEFINE_string("data_dir", str(DEFAULT_DATA_DIR), "Directory with <corpus>/{train,valid,test}.txt, or with the three files; empty: download.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory for the prepared corpus (default: TFDS's).")
flags.DEFINE_string("model_dir", None, "Output directory (default: runs/<preset>). Re-running resumes from it.")
flags.DEFINE_integer("checkpoint_every", 200, "Also checkpoint every this many batches (0: epoch ends only).")
flags.DEFINE_integer("log_every", 100, "Print a progress line every this many batches.")
flags.DEFINE_enum("jit_compile", "false", ["auto", "true", "false"], "XLA-compile the train step (Keras's jit_compile; auto: Keras decides).")
flags.DEFINE_enum("distribution", "none", list(ks.distribution.NAMES),
                  "none: one device; mirrored: tf.distribute.MirroredStrategy over this machine's GPUs; multi_worker: "
                  "MultiWorkerMirroredStrategy, cluster from TF_CONFIG (run the same command on every worker). The "
                  "--batch_size streams are split evenly over the replicas.")
# Settings a preset fills (None = take the preset's value).
flags.DEFINE_string("corpus", None, "ptb | wikitext2.")
flags.DEFINE_string("model", None, f"Architecture: {' | '.join(ks.models.ARCHS)}.")
flags.DEFINE_integer("emsize", None, "Embedding size.")
flags.DEFINE_integer("nhid", None, "Hidden units per layer.")
flags.DEFINE_integer("nlayers", None, "Recurrent layers.")
flags.DEFINE_float("dropout", None, "Output dropout (all dropouts for --model=lstm).")
flags.DEFINE_float("dropouth", None, "Dropout between layers / RHN hidden dropout.")
flags.DEFINE_float("dropouti", None, "Input (embedding output) dropout.")
flags.DEFINE_float("dropoute", None, "Embedding (word) dropout.")
flags.DEFINE_float("wdrop", None, "Weight drop on recurrent kernels (AWD-LSTM, ON-LSTM).")
flags.DEFINE_bool("tied", None, "Tie embedding and softmax (one shared masked matrix).")
flags.DEFINE_bool("couple", None, "RHN: coupled carry gate c = 1 - t.")
flags.DEFINE_integer("depth", None, "RHN recurrence depth.")
flags.DEFINE_integer("chunk_size", None, "ON-LSTM chunk size.")
flags.DEFINE_bool("sparse", None, "Train sparse (False: the dense baseline).")
flags.DEFINE_float("density", None, "Fraction of active weights in the masked matrices, in (0, 1].")
flags.DEFINE_string("sparse_init", None, "Initial distribution: uniform | er | erk.")
flags.DEFINE_integer("block_size", None, "Masks of whole 1 x b blocks along each kernel's input and the embedding's features (16: TFLite's dynamic-range block-sparse kernels; 4: float); 1: unstructured.")
flags.DEFINE_string("growth", None, "Grow rule: random | momentum | gradient.")
flags.DEFINE_string("death", None, "Drop rule: magnitude | set.")
flags.DEFINE_string("redistribution", None, "cross_gate | gate_wise.")
flags.DEFINE_float("death_rate", None, "Initial drop rate p_0 of the cosine schedule.")
flags.DEFINE_string("update_frequency", None, "Topology update: 'epoch' or a number of steps.")
flags.DEFINE_bool("fix", None, "Static sparse training: no topology updates.")
flags.DEFINE_bool("gmp", None, "Gradual magnitude pruning: start dense (--nosparse) and prune to --density (Zhu & Gupta; from 1/8 to 3/4 of the run, 20 times).")
flags.DEFINE_list("exclude", None, "Layers or weight paths kept dense, e.g. embedding.")
flags.DEFINE_string("optimizer", None, "sgd | adam | sntasgd.")
flags.DEFINE_float("momentum", None, "SGD momentum; with sntasgd, the gradient momentum it keeps for --growth=momentum (SNFS) only.")
flags.DEFINE_float("lr", None, "Learning rate.")
flags.DEFINE_float("clip", None, "Global gradient-norm clip (0: none).")
flags.DEFINE_float("wdecay", None, "Weight decay.")
flags.DEFINE_integer("epochs", None, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Batches per epoch (0: the whole training split); shorter epochs walk on through the text.")
flags.DEFINE_integer("nonmono", None, "Non-monotone interval of the SNT-ASGD trigger.")
flags.DEFINE_integer("bptt", None, "Truncated-BPTT length.")
flags.DEFINE_integer("batch_size", None, "Batch size (parallel text streams).")
flags.DEFINE_integer("seed", None, "Seed for weights, masks, dropout and topology updates.")

def overrides():
    """The settings given on the command line (the preset fills the others)."""
    return {key: FLAGS[key].value for key in ks.runs.DEFAULTS if FLAGS[key].present}


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"train_lm: error: unexpected arguments {argv[1:]}; every setting is a --flag.")
    try:
        # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs an op.
        strategy = ks.distribution.strategy(FLAGS.distribution)
    except ValueError as e:
        sys.exit(f"train_lm: error: {e}")
    try:
        config = ks.runs.settings(FLAGS.preset, overrides())
        ks.runs.train(config, FLAGS.model_dir or f"runs/{FLAGS.preset}", data_dir=FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir,
                      checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every, jit_compile=FLAGS.jit_compile,
                      distribution=strategy)
    except (ks.runs.RunError, FileNotFoundError) as e:
        sys.exit(f"train_lm: error: {e}")


if __name__ == "__main__":
    app.run(main)

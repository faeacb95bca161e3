r"""Train a sparse (Selfish-RNN) word-level language model; resumable.

    python -m trainers.train_lm                              # quick start: preset tiny_ptb
    python -m trainers.train_lm --preset=lstm_ptb_2x1500     # the paper's stacked LSTM
    python -m trainers.train_lm --preset=small_ptb --density=0.2 --growth=gradient

`--preset` fills every setting (ks.models.PRESETS); flags given on the command line
override it. The run trains with `model.fit` and the library's callbacks
(SelfishRNN-style DropAndGrow, NonMonotonicTrigger + SNT-ASGD, averaged-weight
validation), writes TensorBoard logs, checkpoints to `<model_dir>/checkpoints`
(atomically, at every epoch end and every `--checkpoint_every` batches), keeps the
weights with the best validation perplexity (averaged weights once SNT-ASGD
averages), and ends with the test perplexity, the sparsity summary and
`<model_dir>/metrics.json`.

Run the same command again after a crash (even `kill -9` mid-epoch): it resumes from
the last checkpoint, with weights, masks, optimizer state, trigger history,
drop-rate schedule, position in the epoch and RNG state restored. A finished run
just reports its results again.
"""

import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402

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
flags.DEFINE_string("growth", None, "Grow rule: random | momentum | gradient.")
flags.DEFINE_string("death", None, "Drop rule: magnitude | set.")
flags.DEFINE_string("redistribution", None, "cross_gate | gate_wise.")
flags.DEFINE_float("death_rate", None, "Initial drop rate p_0 of the cosine schedule.")
flags.DEFINE_string("update_frequency", None, "Topology update: 'epoch' or a number of steps.")
flags.DEFINE_bool("fix", None, "Static sparse training: no topology updates.")
flags.DEFINE_list("exclude", None, "Layers or weight paths kept dense, e.g. embedding.")
flags.DEFINE_string("optimizer", None, "sgd | adam | sntasgd.")
flags.DEFINE_float("lr", None, "Learning rate.")
flags.DEFINE_float("clip", None, "Global gradient-norm clip (0: none).")
flags.DEFINE_float("wdecay", None, "Weight decay.")
flags.DEFINE_integer("epochs", None, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Batches per epoch (0: the whole training split); shorter epochs walk on through the text.")
flags.DEFINE_integer("nonmono", None, "Non-monotone interval of the SNT-ASGD trigger.")
flags.DEFINE_integer("bptt", None, "Truncated-BPTT length.")
flags.DEFINE_integer("batch_size", None, "Batch size (parallel text streams).")
flags.DEFINE_integer("seed", None, "Seed for weights, masks, dropout and topology updates.")

MODEL_KEYS = ("emsize", "nhid", "nlayers", "dropout", "dropouth", "dropouti", "dropoute", "wdrop", "tied", "couple", "depth", "chunk_size")
DEFAULTS = {
    "model": "lstm", "corpus": "ptb", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.0, "dropouth": 0.0,
    "dropouti": 0.0, "dropoute": 0.0, "wdrop": 0.0, "tied": False, "couple": True, "depth": 10, "chunk_size": 10,
    "sparse": True, "density": 0.33, "sparse_init": "uniform", "growth": "random", "death": "magnitude",
    "redistribution": "cross_gate", "death_rate": 0.5, "update_frequency": "epoch", "fix": False, "exclude": [],
    "optimizer": "sntasgd", "lr": 20.0, "clip": 0.25, "wdecay": 1.2e-6, "epochs": 3, "steps_per_epoch": 0,
    "nonmono": 5, "bptt": 35, "batch_size": 20, "seed": 1111,
}


class UsageError(Exception):
    """A bad flag or input: reported as one line, without a traceback."""


def resolve_config():
    """Defaults, then the preset, then the flags given on the command line."""
    try:
        chosen = ks.models.preset(FLAGS.preset)
    except ValueError as e:
        raise UsageError(e) from None
    config = dict(DEFAULTS)
    config.update({("model" if k == "arch" else k): v for k, v in chosen["model"].items()})
    config.update(chosen["train"])
    for key in DEFAULTS:
        if FLAGS[key].present:
            config[key] = FLAGS[key].value
    config["preset"] = FLAGS.preset
    return config


def validate(config):
    if config["model"] not in ks.models.ARCHS:
        raise UsageError(f"--model={config['model']!r} is not one of {list(ks.models.ARCHS)}.")
    try:
        config["corpus"] = ks.data.corpora.canonical_name(config["corpus"])
    except ValueError as e:
        raise UsageError(e) from None
    if not 0.0 < config["density"] <= 1.0:
        raise UsageError(f"--density must be in (0, 1], got {config['density']}.")
    for key in ("bptt", "batch_size", "epochs", "emsize", "nhid", "nlayers"):
        if config[key] < 1:
            raise UsageError(f"--{key} must be >= 1, got {config[key]}.")
    if config["lr"] <= 0:
        raise UsageError(f"--lr must be positive, got {config['lr']}.")
    if config["optimizer"] not in ("sgd", "adam", "sntasgd"):
        raise UsageError(f"--optimizer={config['optimizer']!r} is not one of sgd, adam, sntasgd.")
    frequency = str(config["update_frequency"])
    if frequency != "epoch" and not (frequency.isdigit() and int(frequency) > 0):
        raise UsageError(f"--update_frequency must be 'epoch' or a positive number of steps, got {frequency!r}.")
    config["update_frequency"] = "epoch" if frequency == "epoch" else int(frequency)
    return config


def build_model(config, vocabulary):
    model = ks.models.language_model(
        config["model"],
        len(vocabulary),
        batch_size=config["batch_size"],
        seq_len=config["bptt"],
        stateful=True,
        seed=config["seed"],
        vocabulary=vocabulary.itos,
        **{k: config[k] for k in MODEL_KEYS},
    )
    if config["sparse"]:
        ks.sparsity.initialize(model, config["density"], config["sparse_init"], seed=config["seed"], exclude=config["exclude"])
    clip = config["clip"] or None
    decay = config["wdecay"] or None
    optimizer = {
        "sgd": lambda: keras.optimizers.SGD(config["lr"], global_clipnorm=clip, weight_decay=decay),
        "adam": lambda: keras.optimizers.Adam(config["lr"], global_clipnorm=clip, weight_decay=decay),
        "sntasgd": lambda: ks.optimizers.SNTASGD(config["lr"], weight_decay=decay, global_clipnorm=clip),
    }[config["optimizer"]]()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    optimizer.build(model.trainable_variables)
    return model


def build_callbacks(config, model_dir, steps_per_epoch, train):
    """The callback list, in the order that matters.

    Epoch end: the best weights are saved first (the weights validation scored),
    then the topology is updated, then the trigger looks at the validation loss, then
    the resumable checkpoint is written; TensorBoard last, so it sees every log.
    """
    named = {}
    stop = ks.callbacks.StopOnNaN()
    reset = ks.callbacks.ResetStates()
    logger = ks.callbacks.PerplexityLogger(FLAGS.log_every, steps_per_epoch)
    named["best"] = ks.callbacks.BestWeights(model_dir / "best.weights.h5", monitor="val_loss")
    callbacks = [stop, reset, logger, named["best"]]
    if config["sparse"] and not config["fix"]:
        named["drop_and_grow"] = ks.callbacks.DropAndGrow(
            drop=config["death"],
            grow=config["growth"],
            redistribution=config["redistribution"],
            drop_fraction=config["death_rate"],
            update_every=config["update_frequency"],
            end_step=config["epochs"] * steps_per_epoch,
            seed=config["seed"],
            exclude=config["exclude"],
            data=train if config["growth"] == "gradient" else None,
        )
        callbacks.append(named["drop_and_grow"])
    if config["optimizer"] == "sntasgd":
        named["trigger"] = ks.callbacks.NonMonotonicTrigger(config["nonmono"], monitor="val_loss")
        callbacks.append(named["trigger"])
    checkpoint = ks.callbacks.Checkpoint(model_dir / "checkpoints", FLAGS.checkpoint_every or None, stateful=named)
    callbacks.append(checkpoint)
    if config["optimizer"] == "sntasgd":
        callbacks.append(ks.callbacks.SwapAveragedWeights())  # validation on the averaged weights
    callbacks.append(keras.callbacks.TensorBoard(str(model_dir / "tensorboard")))
    return callbacks, named, checkpoint, reset, logger, stop


def evaluate(model, dataset):
    model.reset_states()
    loss = model.evaluate(dataset, verbose=0)
    model.reset_states()
    return loss


def run(config):
    model_dir = pathlib.Path(FLAGS.model_dir or f"runs/{config['preset']}")
    model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config["seed"])
    data_dir = FLAGS.data_dir or None
    print(f"loading {config['corpus']} from {data_dir or 'the public download'}", flush=True)
    corpus = ks.data.load_corpus(config["corpus"], data_dir, tfds_dir=FLAGS.tfds_dir)
    batches = {s: ks.data.lm_batches(getattr(corpus, s), config["batch_size"], config["bptt"]) for s in ("train", "valid", "test")}
    available = int(batches["train"].cardinality())
    steps_per_epoch = min(config["steps_per_epoch"] or available, available)
    print(f"{len(corpus.train):,} training tokens, vocabulary {len(corpus.vocabulary):,}, {steps_per_epoch} batches per epoch", flush=True)
    try:
        model = build_model(config, corpus.vocabulary)
    except ValueError as e:
        raise UsageError(e) from None
    callbacks, named, checkpoint, reset, logger, stop = build_callbacks(config, model_dir, steps_per_epoch, batches["train"])
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))

    position = ks.callbacks.read_checkpoint(model_dir / "checkpoints", model, stateful=named)
    epoch, batch = (position["epoch"], position["batch"]) if position else (0, 0)
    if position:
        print(f"resuming from {model_dir / 'checkpoints'}: epoch {epoch + 1}, batch {batch}, step {position['step']}", flush=True)
    start = time.perf_counter()
    # Epoch e trains on batches e*N .. e*N+N-1 of the repeated split, so epochs shorter
    # than the split (--steps_per_epoch) walk on through the text instead of repeating it.
    stream = batches["train"].repeat()
    if batch and epoch < config["epochs"]:  # finish the interrupted epoch from where it stopped
        reset.skip_next_epoch_begin = True
        checkpoint.batch_offset = logger.batch_offset = batch
        model.fit(stream.skip(epoch * steps_per_epoch + batch), steps_per_epoch=steps_per_epoch - batch, initial_epoch=epoch,
                  epochs=epoch + 1, validation_data=batches["valid"], callbacks=callbacks, verbose=0, shuffle=False)
        epoch += 1
    if epoch < config["epochs"] and not model.stop_training:
        model.fit(stream.skip(epoch * steps_per_epoch), steps_per_epoch=steps_per_epoch, initial_epoch=epoch,
                  epochs=config["epochs"], validation_data=batches["valid"], callbacks=callbacks, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    steps = ks.model_state.optimizer_step(model)
    if stop.bad_step is not None:
        raise UsageError(
            f"the training loss became NaN/Inf at step {stop.bad_step}; stopped. The last good checkpoint is kept in "
            f"{model_dir / 'checkpoints'} (try a lower --lr or a smaller --clip)."
        )

    if (model_dir / "best.weights.h5").is_file():
        model.load_weights(model_dir / "best.weights.h5")
    valid_ppl = math.exp(evaluate(model, batches["valid"]))
    test_ppl = math.exp(evaluate(model, batches["test"]))
    model.save(model_dir / "model.keras")
    rows = ks.sparsity.summary(model) if config["sparse"] else []
    optimizer = ks.optimizers.averaged.averaging_optimizer(model)
    metrics = {
        "preset": config["preset"],
        "resumed_from": position,
        "optimizer_steps": steps,
        "corpus": config["corpus"],
        "valid_ppl": valid_ppl,
        "test_ppl": test_ppl,
        "best_epoch": None if named["best"].best_epoch is None else named["best"].best_epoch + 1,
        "averaging_started_at_step": optimizer.averaging_start if optimizer is not None and optimizer.averaging else None,
        "active_weights": sum(r["active"] for r in rows),
        "masked_weights": sum(r["size"] for r in rows),
        "flops_per_sequence": ks.sparsity.flops(model, config["bptt"]) if config["sparse"] else None,
        "train_seconds_this_run": round(seconds, 1),
        "topology_updates": len(named["drop_and_grow"].history) if "drop_and_grow" in named else 0,
    }
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"best valid ppl {valid_ppl:.2f} | test ppl {test_ppl:.2f} | results in {model_dir}")


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"train_lm: error: unexpected arguments {argv[1:]}; every setting is a --flag.")
    try:
        run(validate(resolve_config()))
    except (UsageError, FileNotFoundError) as e:
        sys.exit(f"train_lm: error: {e}")


if __name__ == "__main__":
    app.run(main)

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
drop-rate schedule, position in the epoch and RNG state restored
(ks.training.fit_resumable). A finished run just reports its results again. The
settings are fixed when the run is created (`<model_dir>/config.json`, written once): a
re-run may change only --epochs (a larger value trains on; the drop-rate cosine keeps
the run's original horizon) and --data_dir, --tfds_dir, --checkpoint_every,
--log_every; any other difference stops it with one line before anything is written.
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
flags.DEFINE_enum("jit_compile", "false", ["auto", "true", "false"], "XLA-compile the train step (Keras's jit_compile; auto: Keras decides).")
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
# The flags a re-run may change; every other setting is fixed when the run is created.
MAY_CHANGE = ("epochs", "data_dir", "tfds_dir", "checkpoint_every", "log_every", "jit_compile")
NEW_RUN = "start a new run: another --model_dir, or delete {}."


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


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


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
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=JIT_COMPILE[FLAGS.jit_compile])
    optimizer.build(model.trainable_variables)
    return model


def read_settings(model_dir):
    """The settings `<model_dir>/config.json` fixed when the run was created; None for a new run."""
    path = model_dir / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    if (model_dir / "checkpoints").exists():
        raise UsageError(f"{model_dir} holds checkpoints but no config.json, so its settings are unknown; {NEW_RUN.format(model_dir)}")
    return None


def check_same_settings(model_dir, saved, config):
    """Refuse a re-run whose model or recipe differs from the run's (before anything is written)."""
    config = json.loads(json.dumps(config))  # compared as config.json stores them (tuples as lists)
    differ = [key for key in DEFAULTS if key not in MAY_CHANGE and saved.get(key) != config[key]]
    if differ:
        changes = ", ".join(f"--{key}={json.dumps(saved.get(key))} in the run, {json.dumps(config[key])} now" for key in differ)
        raise UsageError(
            f"{model_dir} holds a run with other settings ({changes}); a run's model and recipe are fixed when it "
            f"starts (only --{', --'.join(MAY_CHANGE)} may change on a re-run). To train with the new settings, {NEW_RUN.format(model_dir)}"
        )


def write_settings(model_dir, config):
    """Write `<model_dir>/config.json` atomically (once, when the run is created)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "config.json", config)


def write_json(path, value):
    ks.files.atomic_write(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2)))


def build_run_callbacks(config, model_dir, steps_per_epoch, train, end_step):
    """The run's callbacks (ks.training.run_callbacks); the drop-rate cosine ends at `end_step`."""
    drop_and_grow = trigger = None
    if config["sparse"] and not config["fix"]:
        drop_and_grow = ks.callbacks.DropAndGrow(
            drop=config["death"],
            grow=config["growth"],
            redistribution=config["redistribution"],
            drop_fraction=config["death_rate"],
            update_every=config["update_frequency"],
            end_step=end_step,
            seed=config["seed"],
            exclude=config["exclude"],
            data=train if config["growth"] == "gradient" else None,
        )
    if config["optimizer"] == "sntasgd":
        trigger = ks.callbacks.NonMonotonicTrigger(config["nonmono"], monitor="val_loss")
    return ks.training.run_callbacks(
        model_dir,
        topology_update=drop_and_grow,
        trigger=trigger,
        averaged_validation=trigger is not None,  # validation on the averaged weights
        checkpoint_every=FLAGS.checkpoint_every or None,
        log_every=FLAGS.log_every,
        steps_per_epoch=steps_per_epoch,
        loggers=[keras.callbacks.TensorBoard(str(model_dir / "tensorboard"))],
    )


def evaluate(model, dataset):
    model.reset_states()
    loss = model.evaluate(dataset, verbose=0)
    model.reset_states()
    return loss


def stop_message(step, kept, model_dir):
    """The line for a run stopped by a non-finite loss at `step`; `kept`: the last checkpoint's position or None."""
    if kept is None:
        saved = "no checkpoint was written before it, so there is nothing to resume from"
    else:
        saved = f"kept: the checkpoint of step {kept['step']} (epoch {kept['epoch'] + 1}, batch {kept['batch']}) in {model_dir / 'checkpoints'}"
    return (
        f"the training loss became NaN/Inf at step {step}; stopped, {saved}. To train with a lower --lr or a "
        f"smaller --clip, start a new run: another --model_dir, or delete {model_dir}."
    )


def run(config):
    model_dir = pathlib.Path(FLAGS.model_dir or f"runs/{config['preset']}")
    saved = read_settings(model_dir)
    if saved is not None:
        check_same_settings(model_dir, saved, config)
        config = {**saved, "epochs": config["epochs"]}
    data_dir = FLAGS.data_dir or None
    print(f"loading {config['corpus']} from {data_dir or 'the public download'}", flush=True)
    try:
        corpus = ks.data.load_corpus(config["corpus"], data_dir, tfds_dir=FLAGS.tfds_dir)
    except ValueError as e:  # a split file that is not UTF-8 or has no tokens
        raise UsageError(e) from None
    fingerprint = ks.data.corpora.fingerprint(corpus)
    if saved is not None and saved.get("corpus_fingerprint", fingerprint) != fingerprint:
        raise UsageError(
            f"the {config['corpus']} corpus at {data_dir or 'the public download'} is not the one {model_dir} was trained on "
            f"(other vocabulary or split lengths); point --data_dir at the run's corpus, or {NEW_RUN.format(model_dir)}"
        )
    batches = {s: ks.data.lm_batches(getattr(corpus, s), config["batch_size"], config["bptt"]) for s in ("train", "valid", "test")}
    available = int(batches["train"].cardinality())
    steps_per_epoch = min(config["steps_per_epoch"] or available, available)
    print(f"{len(corpus.train):,} training tokens, vocabulary {len(corpus.vocabulary):,}, {steps_per_epoch} batches per epoch", flush=True)
    # Seeded after the corpus is loaded: preparing it (on a cold TFDS cache) draws from
    # the global random generators, and the run must not depend on the cache.
    keras.utils.set_random_seed(config["seed"])
    try:
        model = build_model(config, corpus.vocabulary)
    except ValueError as e:
        raise UsageError(e) from None
    print(f"train step: {'XLA-compiled' if model.jit_compile else 'not XLA-compiled'} (--jit_compile={FLAGS.jit_compile})", flush=True)
    # The drop-rate cosine ends at the epochs the run was created with: a longer
    # --epochs on a re-run trains the final topology further.
    end_step = (saved or config)["epochs"] * steps_per_epoch
    callbacks = build_run_callbacks(config, model_dir, steps_per_epoch, batches["train"], end_step)
    if saved is None:
        write_settings(model_dir, {**config, "corpus_fingerprint": fingerprint})

    position = callbacks.restore(model)
    if position:
        print(f"resuming from {callbacks.checkpoint_dir}: epoch {position['epoch'] + 1}, batch {position['batch']}, step {position['step']}", flush=True)
    start = time.perf_counter()
    ks.training.fit_resumable(model, batches["train"], epochs=config["epochs"], steps_per_epoch=steps_per_epoch, position=position,
                              validation_data=batches["valid"], callbacks=callbacks.callbacks)
    seconds = time.perf_counter() - start
    steps = ks.model_state.optimizer_step(model)
    if callbacks.stop.bad_step is not None:
        # What a re-run would resume from: the checkpoint read back (into the stopped model).
        raise UsageError(stop_message(callbacks.stop.bad_step, callbacks.restore(model), model_dir))

    if callbacks.best.path.is_file():
        model.load_weights(callbacks.best.path)
    valid_ppl = math.exp(evaluate(model, batches["valid"]))
    test_ppl = math.exp(evaluate(model, batches["test"]))
    model.save(model_dir / "model.keras")
    rows = ks.sparsity.summary(model) if config["sparse"] else []
    optimizer = ks.optimizers.averaged.averaging_optimizer(model)
    drop_and_grow = callbacks.stateful.get("drop_and_grow")
    metrics = {
        "preset": config["preset"],
        "resumed_from": position,
        "optimizer_steps": steps,
        "corpus": config["corpus"],
        "valid_ppl": valid_ppl,
        "test_ppl": test_ppl,
        "best_epoch": None if callbacks.best.best_epoch is None else callbacks.best.best_epoch + 1,
        "averaging_started_at_step": optimizer.averaging_start if optimizer is not None and optimizer.averaging else None,
        "active_weights": sum(r["active"] for r in rows),
        "masked_weights": sum(r["size"] for r in rows),
        "flops_per_sequence": ks.sparsity.flops(model, config["bptt"]) if config["sparse"] else None,
        "train_seconds_this_run": round(seconds, 1),
        "topology_updates": len(drop_and_grow.history) if drop_and_grow is not None else 0,
    }
    write_json(model_dir / "metrics.json", metrics)
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

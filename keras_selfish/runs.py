"""Resumable language-model runs: one settings dict, one directory, one training path.

    settings = ks.runs.settings("small_ptb", {"density": 0.2})   # defaults, preset, overrides
    metrics = ks.runs.train(settings, "runs/small", data_dir="../shared/data")

`train` is what `trainers.train_lm` runs and what `trainers.compare` runs for every
method: it builds the model, the optimizer and the callbacks from the settings
(named as train_lm's flags, see `DEFAULTS`), fixes them in `<model_dir>/config.json`
when the run is created, resumes from the run's last checkpoint, and ends with
`<model_dir>/metrics.json` (test perplexity, counts, FLOPs), `<model_dir>/history.json`
(per-epoch logs, every topology update and the initial topology), its figures in
`<model_dir>/plots/` (ks.plots.run_figures) and `<model_dir>/model.keras`.
"""

import json
import math
import pathlib
import time

import keras

from keras_selfish import callbacks as ks_callbacks
from keras_selfish import data as ks_data
from keras_selfish import distribution as ks_distribution
from keras_selfish import files
from keras_selfish import keras_private
from keras_selfish import losses as ks_losses
from keras_selfish import model_state
from keras_selfish import models
from keras_selfish import optimizers as ks_optimizers
from keras_selfish import plots
from keras_selfish import sparsity
from keras_selfish import training
from keras_selfish.data import corpora

MODEL_KEYS = ("emsize", "nhid", "nlayers", "dropout", "dropouth", "dropouti", "dropoute", "wdrop", "tied", "couple", "depth", "chunk_size")
DEFAULTS = {
    "model": "lstm", "corpus": "ptb", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.0, "dropouth": 0.0,
    "dropouti": 0.0, "dropoute": 0.0, "wdrop": 0.0, "tied": False, "couple": True, "depth": 10, "chunk_size": 10,
    "sparse": True, "density": 0.33, "sparse_init": "uniform", "block_size": 1, "growth": "random", "death": "magnitude",
    "redistribution": "cross_gate", "death_rate": 0.5, "update_frequency": "epoch", "fix": False, "gmp": False,
    "exclude": [], "optimizer": "sntasgd", "momentum": 0.0, "lr": 20.0, "clip": 0.25, "wdecay": 1.2e-6, "epochs": 3,
    "steps_per_epoch": 0, "nonmono": 5, "bptt": 35, "batch_size": 20, "seed": 1111,
}
# The settings a re-run may change; every other one is fixed when the run is created.
# (--distribution too: the checkpoints hold the states of the whole global batch.)
MAY_CHANGE = ("epochs", "data_dir", "tfds_dir", "checkpoint_every", "log_every", "jit_compile", "distribution")
NEW_RUN = "start a new run: another --model_dir, or delete {}."
OPTIMIZERS = ("sgd", "adam", "sntasgd")
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
# Fixed, so the weight names in a run's records (topology history, initial topology) do not
# depend on how many models the process built before (Keras numbers unnamed models).
MODEL_NAME = "language_model"


class RunError(ValueError):
    """A bad setting or input, or a run that cannot go on; its message is one line that names the fix."""


def settings(preset_name, overrides=None):
    """`DEFAULTS`, then preset `preset_name` (ks.models.PRESETS), then `overrides` (a dict of settings)."""
    try:
        chosen = models.preset(preset_name)
    except ValueError as e:
        raise RunError(e) from None
    config = dict(DEFAULTS)
    config.update({("model" if k == "arch" else k): v for k, v in chosen["model"].items()})
    config.update(chosen["train"])
    unknown = sorted(set(overrides or {}) - set(DEFAULTS))
    if unknown:
        raise RunError(f"unknown settings {unknown}; the settings are {sorted(DEFAULTS)}.")
    config.update(overrides or {})
    config["preset"] = preset_name
    return validate(config)


def validate(config):
    """Check and normalise a settings dict (returns it); RunError names a bad value."""
    if config["model"] not in models.ARCHS:
        raise RunError(f"--model={config['model']!r} is not one of {list(models.ARCHS)}.")
    try:
        config["corpus"] = corpora.canonical_name(config["corpus"])
    except ValueError as e:
        raise RunError(e) from None
    if not 0.0 < config["density"] <= 1.0:
        raise RunError(f"--density must be in (0, 1], got {config['density']}.")
    for key in ("bptt", "batch_size", "epochs", "emsize", "nhid", "nlayers"):
        if config[key] < 1:
            raise RunError(f"--{key} must be >= 1, got {config[key]}.")
    if config["lr"] <= 0:
        raise RunError(f"--lr must be positive, got {config['lr']}.")
    if config["optimizer"] not in OPTIMIZERS:
        raise RunError(f"--optimizer={config['optimizer']!r} is not one of {', '.join(OPTIMIZERS)}.")
    if not 0.0 <= config["momentum"] < 1.0:
        raise RunError(f"--momentum must be in [0, 1), got {config['momentum']}.")
    frequency = str(config["update_frequency"])
    if frequency != "epoch" and not (frequency.isdigit() and int(frequency) > 0):
        raise RunError(f"--update_frequency must be 'epoch' or a positive number of steps, got {frequency!r}.")
    config["update_frequency"] = "epoch" if frequency == "epoch" else int(frequency)
    if config["block_size"] < 1:
        raise RunError(f"--block_size must be >= 1, got {config['block_size']}.")
    if config["block_size"] > 1 and not config["sparse"]:
        raise RunError("--block_size sets the blocks of the initial sparse masks: it needs --sparse (dense and --gmp runs have none).")
    if config["gmp"] and not config["density"] < 1.0:
        raise RunError("--gmp prunes a dense model down to --density: give a --density below 1.")
    if config["gmp"] and config["sparse"]:
        raise RunError("--gmp starts dense and prunes to --density; it excludes --sparse (sparse from the start): pass --nosparse.")
    return config


def pruning_schedule(total_steps):
    """`(begin_step, end_step, frequency)` of --gmp for a run of `total_steps` optimizer steps.

    Pruning starts after 1/8 of the run, reaches the final sparsity at 3/4 (Zhu &
    Gupta prune over the middle of training and fine-tune after) and prunes 20 times.
    """
    if total_steps < 8:
        raise RunError(f"--gmp needs at least 8 optimizer steps to schedule its pruning, the run has {total_steps}.")
    begin, end = total_steps // 8, (3 * total_steps) // 4
    return begin, end, max(1, (end - begin) // 20)


def build_model(config, vocabulary, jit_compile=False, strategy=None):
    """The compiled stateful language model of `config` (sparse masks set when `config["sparse"]`).

    Under `strategy` (a `tf.distribute.Strategy`) it is built in its scope on the
    streams of one replica (`ks.distribution.per_replica_batch`).
    """
    strategy = strategy or ks_distribution.strategy("none")
    with strategy.scope():
        return _build_model(config, vocabulary, jit_compile, ks_distribution.per_replica_batch(strategy, config["batch_size"]))


def _build_model(config, vocabulary, jit_compile, batch_size):
    model = models.language_model(
        config["model"],
        len(vocabulary),
        batch_size=batch_size,
        seq_len=config["bptt"],
        stateful=True,
        seed=config["seed"],
        vocabulary=vocabulary.itos,
        name=MODEL_NAME,
        **{k: config[k] for k in MODEL_KEYS},
    )
    if config["sparse"]:
        sparsity.initialize(model, config["density"], config["sparse_init"], seed=config["seed"], exclude=config["exclude"],
                            block_size=config["block_size"])
    clip = config["clip"] or None
    decay = config["wdecay"] or None
    momentum = config["momentum"]
    optimizer = {
        "sgd": lambda: keras.optimizers.SGD(config["lr"], momentum=momentum, global_clipnorm=clip, weight_decay=decay),
        "adam": lambda: keras.optimizers.Adam(config["lr"], global_clipnorm=clip, weight_decay=decay),
        "sntasgd": lambda: ks_optimizers.SNTASGD(config["lr"], weight_decay=decay, global_clipnorm=clip, gradient_momentum=momentum or None),
    }[config["optimizer"]]()
    keras_private.exact_gradient_clipping(optimizer)  # one device's dense gradient's clipping on any number of replicas
    model.compile(optimizer, ks_losses.SparseSoftmaxCrossEntropy(), jit_compile=JIT_COMPILE[str(jit_compile).lower()])
    optimizer.build(model.trainable_variables)
    return model


def topology_update(config, train, end_step):
    """The run's `TopologyUpdate` (DropAndGrow, or GradualMagnitudePruning for --gmp), or None."""
    if config["gmp"]:
        begin, end, frequency = pruning_schedule(end_step)
        return ks_callbacks.GradualMagnitudePruning(1.0 - config["density"], begin_step=begin, end_step=end, frequency=frequency,
                                                    exclude=config["exclude"], verbose=0)
    if not config["sparse"] or config["fix"]:
        return None
    return ks_callbacks.DropAndGrow(
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


def read_settings(model_dir):
    """The settings `<model_dir>/config.json` fixed when the run was created; None for a new run."""
    path = model_dir / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    if (model_dir / "checkpoints").exists():
        raise RunError(f"{model_dir} holds checkpoints but no config.json, so its settings are unknown; {NEW_RUN.format(model_dir)}")
    return None


def check_same_settings(model_dir, saved, config):
    """Refuse a re-run whose model or recipe differs from the run's (before anything is written)."""
    config = json.loads(json.dumps(config))  # compared as config.json stores them (tuples as lists)
    differ = [key for key in DEFAULTS if key not in MAY_CHANGE and saved.get(key, DEFAULTS[key]) != config[key]]
    if differ:
        changes = ", ".join(f"--{key}={json.dumps(saved.get(key, DEFAULTS[key]))} in the run, {json.dumps(config[key])} now" for key in differ)
        raise RunError(
            f"{model_dir} holds a run with other settings ({changes}); a run's model and recipe are fixed when it "
            f"starts (only --{', --'.join(MAY_CHANGE)} may change on a re-run). To train with the new settings, {NEW_RUN.format(model_dir)}"
        )


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2)))


def evaluate(model, dataset):
    """Mean loss of the stateful `model` on `dataset`, from zero states."""
    model.reset_states()
    loss = model.evaluate(ks_distribution.distribute(model.distribute_strategy, dataset), verbose=0)
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


def train_flops(epochs, steps_per_epoch, batch_size, initial):
    """Training FLOPs of the whole run from the per-sequence counts at the epoch ends.

    Each epoch's batches cost the mean of the counts at its start and end (exact
    when the active count is fixed; a trapezoid for pruning within the epoch).
    """
    total, before = 0.0, initial
    for epoch in epochs:
        total += steps_per_epoch * batch_size * (before + epoch["train_flops_per_sequence"]) / 2
        before = epoch["train_flops_per_sequence"]
    return total


def topology_record(rows):
    """The topology of `ks.sparsity.summary` rows as an update record at step 0 (for `ks.plots.gate_drift`)."""
    weights = {r["name"]: {"active": r["active"], "density": r["density"], "gates": {g["gate"]: {"active": g["active"], "density": g["density"]} for g in r["gates"]}} for r in rows}
    return {"step": 0, "active": sum(r["active"] for r in rows), "topology_change": 0.0, "weights": weights}


def read_metrics(model_dir):
    """`<model_dir>/metrics.json` (see `train`), or None before the run has finished once."""
    path = pathlib.Path(model_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_history(model_dir):
    """`<model_dir>/history.json`: `{"epochs", "topology", "initial"}` (see `train`)."""
    return json.loads((pathlib.Path(model_dir) / "history.json").read_text())


def train(config, model_dir, *, data_dir, tfds_dir=None, checkpoint_every=200, log_every=100, jit_compile="false", distribution="none",
          loggers=None):
    """Create or resume the run of `config` in `model_dir` and train it to `config["epochs"]`.

    Args:
        config: settings (`settings(...)`); for an existing run only `epochs` may
            differ from the run's (a larger value trains on; the drop-rate cosine
            keeps the run's original horizon).
        model_dir: the run's directory.
        data_dir: directory with `<corpus>/{train,valid,test}.txt` or the three files; None downloads.
        tfds_dir: TensorFlow Datasets directory (None: TFDS's default).
        checkpoint_every: also checkpoint every this many batches (None or 0: epoch ends only).
        log_every: a progress line every this many batches (0: none).
        jit_compile: "auto" | "true" | "false" (Keras's `jit_compile` of the train step).
        distribution: "none" | "mirrored" | "multi_worker" (`ks.distribution.strategy`;
            multi_worker reads TF_CONFIG and must be chosen before TensorFlow runs an
            op) or a `tf.distribute.Strategy`. Each replica trains `batch_size /
            replicas` of the text streams; the chief worker writes the run's files.
        loggers: extra log-reading callbacks (None: TensorBoard in `<model_dir>/tensorboard`, on the chief).

    Returns:
        the metrics dict also written to `<model_dir>/metrics.json`.

    Raises:
        RunError: bad input or settings, or the loss became NaN/Inf (the message
            says what was kept).
    """
    try:
        strategy = ks_distribution.strategy(distribution) if isinstance(distribution, str) else distribution
    except ValueError as e:
        raise RunError(e) from None
    chief = ks_distribution.is_chief(strategy)
    model_dir = pathlib.Path(model_dir)
    saved = read_settings(model_dir)
    if saved is not None:
        check_same_settings(model_dir, saved, config)
        config = {**DEFAULTS, **saved, "epochs": config["epochs"]}
    print(f"loading {config['corpus']} from {data_dir or 'the public download'}", flush=True)
    try:
        corpus = ks_data.load_corpus(config["corpus"], data_dir, tfds_dir=tfds_dir)
    except ValueError as e:  # a split file that is not UTF-8 or has no tokens
        raise RunError(e) from None
    fingerprint = corpora.fingerprint(corpus)
    if saved is not None and saved.get("corpus_fingerprint", fingerprint) != fingerprint:
        raise RunError(
            f"the {config['corpus']} corpus at {data_dir or 'the public download'} is not the one {model_dir} was trained on "
            f"(other vocabulary or split lengths); point --data_dir at the run's corpus, or {NEW_RUN.format(model_dir)}"
        )
    batches = {s: ks_data.lm_batches(getattr(corpus, s), config["batch_size"], config["bptt"]) for s in corpora.SPLITS}
    available = int(batches["train"].cardinality())
    steps_per_epoch = min(config["steps_per_epoch"] or available, available)
    print(f"{len(corpus.train):,} training tokens, vocabulary {len(corpus.vocabulary):,}, {steps_per_epoch} batches per epoch", flush=True)
    # Seeded after the corpus is loaded: preparing it (on a cold TFDS cache) draws from
    # the global random generators, and the run must not depend on the cache.
    keras.utils.set_random_seed(config["seed"])
    if JIT_COMPILE[str(jit_compile).lower()] is True and ks_distribution.replicas(strategy) > 1:
        raise RunError(
            "--jit_compile=true cannot run on more than one replica with Keras 3: it XLA-compiles the step of all replicas "
            "as one program, which cannot reach the variables of another device, and the gradient all-reduce across workers "
            "(CollectiveGatherV2) has no XLA kernel; use --jit_compile=auto (Keras turns XLA off under tf.distribute) or "
            "false. The fused LSTM loop and SNT-ASGD's averaging are XLA-compiled either way."
        )
    if config["growth"] == "gradient" and ks_distribution.replicas(strategy) > 1:
        raise RunError("--growth=gradient (RigL) cannot run on more than one replica (see ks.callbacks.DropAndGrow); use --growth=random or momentum.")
    try:
        model = build_model(config, corpus.vocabulary, jit_compile, strategy)
    except ValueError as e:
        raise RunError(e) from None
    print(f"train step: {'XLA-compiled' if model.jit_compile else 'not XLA-compiled'} (--jit_compile={jit_compile})", flush=True)
    if ks_distribution.replicas(strategy) > 1:
        print(f"{ks_distribution.replicas(strategy)} replicas of {model.batch_size} streams ({type(strategy).__name__})", flush=True)
    # The drop-rate cosine (and --gmp's schedule) ends at the epochs the run was
    # created with: a longer --epochs on a re-run trains the final topology further.
    end_step = (saved or config)["epochs"] * steps_per_epoch
    trigger = ks_callbacks.NonMonotonicTrigger(config["nonmono"], monitor="val_loss") if config["optimizer"] == "sntasgd" else None
    run = training.run_callbacks(
        model_dir,
        topology_update=topology_update(config, batches["train"], end_step),
        trigger=trigger,
        averaged_validation=trigger is not None,  # validation on the averaged weights
        checkpoint_every=checkpoint_every or None,
        log_every=log_every,
        steps_per_epoch=steps_per_epoch,
        seq_len=config["bptt"],
        loggers=([keras.callbacks.TensorBoard(str(model_dir / "tensorboard"))] if chief else []) if loggers is None else loggers,
    )
    initial_flops = sparsity.flops(model, config["bptt"])["train"]["sparse"]
    if saved is None and chief:
        write_json(model_dir / "initial_topology.json", topology_record(sparsity.summary(model, print_fn=None)))
        write_json(model_dir / "config.json", {**config, "corpus_fingerprint": fingerprint})

    position = run.restore(model)
    if position:
        print(f"resuming from {run.checkpoint_dir}: epoch {position['epoch'] + 1}, batch {position['batch']}, step {position['step']}", flush=True)
    start = time.perf_counter()
    training.fit_resumable(model, batches["train"], epochs=config["epochs"], steps_per_epoch=steps_per_epoch, position=position,
                           validation_data=batches["valid"], callbacks=run.callbacks)
    seconds = time.perf_counter() - start
    steps = model_state.optimizer_step(model)  # before the best weights (and their optimizer state) load
    if run.stop.bad_step is not None:
        # What a re-run would resume from: the checkpoint read back (into the stopped model).
        raise RunError(stop_message(run.stop.bad_step, run.restore(model), model_dir))

    initial = model_dir / "initial_topology.json"
    history = {
        "epochs": run.history.epochs,
        "topology": getattr(run.stateful.get("drop_and_grow"), "history", []),
        "initial": json.loads(initial.read_text()) if initial.is_file() else None,
    }
    if chief:
        write_json(model_dir / "history.json", history)
        plots.run_figures(history, model_dir / "plots", label=config["preset"])
    if run.best.path.is_file():
        model.load_weights(run.best.path)
    valid_ppl = math.exp(evaluate(model, batches["valid"]))
    test_ppl = math.exp(evaluate(model, batches["test"]))
    with ks_distribution.write_path(model_dir / "model.keras", strategy) as path:
        model.save(path)
    rows = sparsity.summary(model)
    optimizer = ks_optimizers.averaged.averaging_optimizer(model)
    metrics = {
        "preset": config["preset"],
        "resumed_from": position,
        "optimizer_steps": steps,
        "epochs_trained": history["epochs"][-1]["epoch"] if history["epochs"] else 0,
        "corpus": config["corpus"],
        "valid_ppl": valid_ppl,
        "test_ppl": test_ppl,
        "best_epoch": None if run.best.best_epoch is None else run.best.best_epoch + 1,
        "averaging_started_at_step": optimizer.averaging_start if optimizer is not None and optimizer.averaging else None,
        "active_weights": sum(r["active"] for r in rows),
        "masked_weights": sum(r["size"] for r in rows),
        "flops_per_sequence": sparsity.flops(model, config["bptt"]),
        "train_flops": train_flops(history["epochs"], steps_per_epoch, config["batch_size"], initial_flops),
        "train_seconds": round(sum(e["seconds"] for e in history["epochs"]), 1),
        "train_seconds_this_run": round(seconds, 1),
        "topology_updates": len(history["topology"]),
    }
    if chief:
        write_json(model_dir / "metrics.json", metrics)
    print(f"best valid ppl {valid_ppl:.2f} | test ppl {test_ppl:.2f} | results in {model_dir}", flush=True)
    return metrics

r"""Compare sparse-training methods on one model, budget and seed: the paper's table, resumable.

    python -m trainers.compare --preset=small_ptb --epochs=8 --steps_per_epoch=400 --nonmono=2 \
        --methods=dense,static,set,snfs,rigl,gmp,selfish,selfish_gate_wise,selfish_sgd,static_sgd \
        --output=runs/compare --results=bench/results/compare
    python -m trainers.compare ... --methods=selfish,rigl --seeds=2222   # more seeds, same table

Each method (ks.comparison.METHODS) is a `ks.runs.train` run, the same training code as
train_lm, of the preset's model with the flags below applied to every method; only
the method's own settings differ. Runs live in `<output>/<method>/seed<seed>/`: a killed
comparison run again resumes the unfinished run from its checkpoint and skips the
finished ones. After every run the table (`<results>/results.md`, `results.json`: every
finished run in `<output>`, seeds pooled) and the figures are rewritten:
`validation.png` (validation perplexity per epoch, every method, first seed) and, for
Selfish-RNN and its gate-wise ablation, `gate_density_<method>.png` and
`topology_<method>.png`.
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
DRIFT_METHODS = ("selfish", "selfish_gate_wise")

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "small_ptb", f"The model and recipe every method shares; one of {sorted(ks.models.PRESETS)}.")
flags.DEFINE_list("methods", list(ks.comparison.METHODS), f"Methods to run, in order; of {list(ks.comparison.METHODS)}.")
flags.DEFINE_list("seeds", None, "Seeds to run every method with (default: the preset's).")
flags.DEFINE_string("output", "runs/compare", "Directory of the runs (<output>/<method>/seed<seed>/).")
flags.DEFINE_string("results", None, "Directory for the table and figures (default: --output).")
flags.DEFINE_string("data_dir", str(DEFAULT_DATA_DIR), "Directory with <corpus>/{train,valid,test}.txt, or the three files; empty: download.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory (default: TFDS's).")
flags.DEFINE_integer("checkpoint_every", 200, "Also checkpoint every this many batches (0: epoch ends only).")
# Shared settings that override the preset for every method.
flags.DEFINE_integer("epochs", None, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Batches per epoch (0: the whole training split).")
flags.DEFINE_float("density", None, "Density of every sparse method (gmp: the final one).")
flags.DEFINE_integer("nonmono", None, "Non-monotone interval of the SNT-ASGD trigger.")
flags.DEFINE_float("lr", None, "Learning rate.")
flags.DEFINE_integer("emsize", None, "Embedding size.")
flags.DEFINE_integer("nhid", None, "Hidden units per layer.")
flags.DEFINE_integer("nlayers", None, "Recurrent layers.")
flags.DEFINE_integer("batch_size", None, "Batch size.")
flags.DEFINE_integer("bptt", None, "Truncated-BPTT length.")

SHARED = ("epochs", "steps_per_epoch", "density", "nonmono", "lr", "emsize", "nhid", "nlayers", "batch_size", "bptt")


def finished_runs(output, epochs):
    """`{(method, seed): metrics}` of every finished run under `output`."""
    results = {}
    for method in ks.comparison.METHODS:
        for run_dir in sorted((output / method).glob("seed*")):
            metrics = ks.runs.read_metrics(run_dir)
            if ks.comparison.is_finished(metrics, epochs):
                results[(method, int(run_dir.name[len("seed"):]))] = metrics
    return results


def write_results(output, results_dir, base):
    """Rewrite the table and the figures from every finished run in `output`."""
    results = finished_runs(output, base["epochs"])
    rows = ks.comparison.summarize(results)
    table = ks.comparison.markdown_table(rows)
    results_dir.mkdir(parents=True, exist_ok=True)
    ks.files.atomic_write(results_dir / "results.md", lambda t: t.write_text(table + "\n"))
    ks.runs.write_json(results_dir / "results.json", {"command": " ".join(sys.argv), "rows": rows})
    first = {}
    for (method, seed) in sorted(results, key=lambda k: (list(ks.comparison.METHODS).index(k[0]), k[1])):
        first.setdefault(method, seed)
    histories = {m: ks.runs.read_history(output / m / f"seed{s}") for m, s in first.items()}
    if histories:
        ks.plots.validation_curves({m: h["epochs"] for m, h in histories.items()}, results_dir / "validation.png",
                                   title=f"Validation perplexity per epoch ({base['preset']}, density {base['density']:g})")
    for method in DRIFT_METHODS:
        if method in histories and histories[method]["topology"]:
            ks.plots.gate_drift(histories[method]["topology"], results_dir / f"gate_density_{method}.png", histories[method].get("initial"))
            ks.plots.topology_dynamics(histories[method]["topology"], results_dir / f"topology_{method}.png")
    return table


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"compare: error: unexpected arguments {argv[1:]}; every setting is a --flag.")
    unknown = [m for m in FLAGS.methods if m not in ks.comparison.METHODS]
    if unknown:
        sys.exit(f"compare: error: unknown methods {unknown}; use some of {list(ks.comparison.METHODS)}.")
    output = pathlib.Path(FLAGS.output)
    results_dir = pathlib.Path(FLAGS.results or FLAGS.output)
    shared = {key: FLAGS[key].value for key in SHARED if FLAGS[key].present}
    try:
        base = ks.runs.settings(FLAGS.preset, shared)
        seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else [base["seed"]]
    except (ks.runs.RunError, ValueError) as e:
        sys.exit(f"compare: error: {e}")
    plan = [(method, seed) for seed in seeds for method in FLAGS.methods]
    for number, (method, seed) in enumerate(plan, 1):
        run_dir = output / method / f"seed{seed}"
        name = f"[{number}/{len(plan)}] {method} (seed {seed})"
        if ks.comparison.is_finished(ks.runs.read_metrics(run_dir), base["epochs"]):
            print(f"== {name}: finished earlier, skipped ({run_dir})", flush=True)
            continue
        print(f"== {name}: {ks.comparison.METHODS[method][1]} -> {run_dir}", flush=True)
        try:
            config = ks.runs.validate(ks.comparison.method_settings(method, {**base, "seed": seed}))
            metrics = ks.runs.train(config, run_dir, data_dir=FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir,
                                    checkpoint_every=FLAGS.checkpoint_every, log_every=0, loggers=[])
        except (ks.runs.RunError, FileNotFoundError) as e:
            sys.exit(f"compare: error: {name}: {e}")
        print(f"== {name}: valid ppl {metrics['valid_ppl']:.2f}, test ppl {metrics['test_ppl']:.2f}, "
              f"{metrics['train_seconds']:.0f} s", flush=True)
        write_results(output, results_dir, base)
    print(write_results(output, results_dir, base))
    print(f"table and figures in {results_dir}")


if __name__ == "__main__":
    app.run(main)

r"""Shipping sparse PTB language models: TFLite file size, latency, runtime memory, parity.

For 2 x W LSTM language models (W = 200, 650; vocabulary 10,000) it writes, per width:

* dense: float32, dynamic-range (int8 weights, float activations) and int8;
* unstructured sparse (density 0.33): float32 and dynamic-range (DENSIFY at run time);
* 1x16 block-sparse (every matrix's active weights in whole 1x16 blocks along its
  inputs, the embedding's along its features) at each `--densities`: dynamic-range,
  and int8 at the first density;
* 1x4 block-sparse at each `--densities`: float32 (TFLite's float block size).

Weights: with `--runs_dir` every model is a `ks.runs` training run `<runs_dir>/<W>_<variant>`
(variants `dense`, `unstructured_0.33`, `block16_0.33`, `block4_0.25`, ...);
`--train_epochs=E` first trains (or resumes) each unfinished one for the same short
budget, E epochs of `--train_steps_per_epoch` batches of the `small_ptb` recipe at
width W (Selfish-RNN with `--block_size` 16 or 4 for the block variants, the dense
baseline with `--nosparse`), and its row reports the run's Keras validation and test
perplexity on the whole splits. A model without a finished run is randomly
initialised with its masks set by hand (exact block counts per matrix), and its row
says so: perplexity is then only a parity check of the export against Keras.

Per file: bytes; whether the graph holds DENSIFY; the kernels `ks.export.TFLiteRunner`
picks; per-token latency with 1 and 2 threads on XNNPack and on LiteRT's built-in
kernels (one process per thread count loads every file of a width into a
`TFLiteRunner` and times its `step` in interleaved rounds; the median of the rounds' means); runtime memory (peak RSS of a
fresh LiteRT-only process that loads the file with the runner's kernels and runs
`--memory_steps` steps, minus that of the same process without a model); perplexity of
the first `--ppl_tokens` PTB test tokens, Keras and TFLite. The bar for latency is
the fastest dense export of the same width (any precision, either kernels).

    python -m bench.export
    python -m bench.export --widths=200 --rounds=3 --ppl_tokens=100
    python -m bench.export --runs_dir=runs/export_bench --train_epochs=2   # trained models

Prints a markdown table, writes bench/results/export.json and bench/results/export.md.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_selfish as ks  # noqa: E402
from bench import machine  # noqa: E402
from keras_selfish.files import atomic_write  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["200", "650"], "LSTM widths (2 layers, emsize = nhid).")
flags.DEFINE_list("densities", ["0.33", "0.25", "0.1"], "Densities of the block-sparse models.")
flags.DEFINE_string("runs_dir", None, "Directory of the models' ks.runs training runs <W>_<variant>; a model without a finished run is random with masks by hand.")
flags.DEFINE_integer("train_epochs", 0, "First train (or resume) every unfinished run in --runs_dir for this many epochs (0: train none).")
flags.DEFINE_integer("train_steps_per_epoch", 150, "Batches per training epoch (with --train_epochs).")
flags.DEFINE_integer("rounds", 7, "Interleaved timing rounds.")
flags.DEFINE_integer("steps_per_round", 40, "Steps per file per round.")
flags.DEFINE_integer("memory_steps", 1000, "Steps the memory probe runs.")
flags.DEFINE_integer("ppl_tokens", 300, "Test tokens scored by Keras and by each TFLite file.")
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data"), "Directory with ptb/.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_string("work_dir", None, "Keep the exported files here (default: a temporary directory).")
flags.DEFINE_string("output", str(pathlib.Path(__file__).parent / "results" / "export.json"), "Result file (the .md goes next to it).")

# LiteRT only (no TensorFlow), so its RSS is the model's. argv: mode, threads, then a JSON list.
PROBE = r"""
import json, re, sys, time
import numpy as np
from ai_edge_litert import interpreter as litert
mode, threads, files = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
resolvers = {"xnnpack": litert.OpResolverType.AUTO, "builtin": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}

def load(path, kernels):
    interpreter = litert.Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolvers[kernels])
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    inputs = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
    return [interpreter, runner, inputs]

def run(loaded, steps, start=0):
    _, runner, inputs = loaded
    for t in range(start, start + steps):
        inputs["token"] = np.array([t % 1000], np.int32)
        outputs = runner(**inputs)
        inputs.update({k: v for k, v in outputs.items() if k != "logits"})

if mode == "memory":
    for path, kernels, steps in files:
        run(load(path, kernels), steps)
    # VmHWM: this process image's peak RSS. (ru_maxrss would carry the parent's peak across exec.)
    print(json.dumps({"rss_kb": int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))}))
    sys.exit()
rounds, steps = int(sys.argv[4]), int(sys.argv[5])
import warnings
from keras_selfish.export.runner import TFLiteRunner  # time what users run: its step, its kernels
runners = []
for path, kernels in files:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runners.append(TFLiteRunner(path, num_threads=threads, use_xnnpack=kernels == "xnnpack"))
    for t in range(10):  # warm up
        runners[-1].step(t)
ran = [runner.resolver == kernels for runner, (_, kernels) in zip(runners, files)]
times = [[] for _ in files]
for r in range(rounds):
    for i, runner in enumerate(runners):
        start = time.perf_counter()
        for t in range(10 + r * steps, 10 + (r + 1) * steps):
            runner.step(t % 1000)
        times[i].append(1000 * (time.perf_counter() - start) / steps)
print(json.dumps({"ms": [float(np.median(t)) for t in times], "ran_as_asked": ran}))
"""


def probe(mode, threads, files, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", PROBE, mode, str(threads), json.dumps(files), *map(str, extra)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def block_masks(model, density, block, seed):
    """Exactly round(density * n) of each matrix's n 1 x `block` blocks active (along a kernel's
    inputs, an embedding's features), the rest zeroed, through the masked-weight protocol."""
    rng = np.random.default_rng(seed)
    for weight in ks.sparsity.collect(model):
        axis = 1 if weight.variable.path.endswith("embeddings") else 0
        shape = np.moveaxis(np.zeros(weight.shape, np.bool_), axis, 0).shape
        blocks = (-(-shape[0] // block), *shape[1:])
        active = np.zeros(int(np.prod(blocks)), np.bool_)
        active[rng.permutation(active.size)[: round(density * active.size)]] = True
        mask = np.moveaxis(np.repeat(active.reshape(blocks), block, axis=0)[: shape[0]], 0, axis).astype("float32")
        weight.mask.assign(mask)
        weight.variable.assign(keras.ops.convert_to_numpy(weight.variable) * mask)


def models():
    """`[(variant, kind, density, block, [precisions])]` exported at every width."""
    densities = [float(d) for d in FLAGS.densities]
    variants = [("dense", "dense", 1.0, None, [None, "dynamic", "int8"]), ("unstructured_0.33", "unstructured", 0.33, None, [None, "dynamic"])]
    variants += [(f"block16_{d}", "1x16", d, 16, ["dynamic", "int8"] if i == 0 else ["dynamic"]) for i, d in enumerate(densities)]
    variants += [(f"block4_{d}", "1x4", d, 4, [None]) for d in densities]
    return variants


def training_settings(width, kind, density, block):
    """The run settings of one model: the `small_ptb` recipe at `width` for the short, shared budget."""
    sparse = {"sparse": False} if kind == "dense" else {"density": density, "block_size": block or 1}
    return ks.runs.settings("small_ptb", {"emsize": width, "nhid": width, "epochs": FLAGS.train_epochs,
                                          "steps_per_epoch": FLAGS.train_steps_per_epoch, **sparse})


def train_runs(widths):
    """Train (or resume) every model's unfinished run in `--runs_dir`, before anything is exported."""
    plan = [(width, *variant) for width in widths for variant in models()]
    for number, (width, variant, kind, density, block, _) in enumerate(plan, 1):
        run_dir = pathlib.Path(FLAGS.runs_dir) / f"{width}_{variant}"
        if ks.comparison.is_finished(ks.runs.read_metrics(run_dir), FLAGS.train_epochs):
            continue
        print(f"== [{number}/{len(plan)}] training {run_dir} ({FLAGS.train_epochs} x {FLAGS.train_steps_per_epoch} batches)", flush=True)
        ks.runs.train(training_settings(width, kind, density, block), run_dir, data_dir=FLAGS.data_dir or None,
                      tfds_dir=FLAGS.tfds_dir, log_every=0, loggers=[])
        keras.backend.clear_session()


def language_model(width, variant, kind, density, block, vocabulary, seed):
    """`(batch-1 Keras model, how its weights came, the run's metrics or None)`."""
    keras.utils.set_random_seed(seed)
    model = ks.models.language_model("lstm", len(vocabulary), emsize=width, nhid=width, nlayers=2, batch_size=1, seq_len=FLAGS.ppl_tokens, vocabulary=vocabulary)
    run_dir = pathlib.Path(FLAGS.runs_dir or "") / f"{width}_{variant}"
    metrics = ks.runs.read_metrics(run_dir) if FLAGS.runs_dir else None
    if metrics is not None:
        trained = keras.saving.load_model(run_dir / "model.keras", compile=False)
        model.set_weights(trained.get_weights())
        return model, f"trained ({run_dir.name}: {metrics['optimizer_steps']} batches)", metrics
    if kind == "unstructured":
        ks.sparsity.initialize(model, density, seed=seed)
    elif block:
        block_masks(model, density, block, seed)
    return model, "random" if kind == "dense" else "random, masks by hand", None


def perplexity(logits, ids):
    logits = logits[:-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    nll = top[:, 0] + np.log(np.exp(logits - top).sum(-1)) - logits[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def export_width(width, corpus, tmp):
    rows = []
    ids = np.asarray(corpus.test[: FLAGS.ppl_tokens], np.int32)
    for seed, (variant, kind, density, block, precisions) in enumerate(models()):
        model, weights, metrics = language_model(width, variant, kind, density, block, corpus.vocabulary.itos, seed)
        quality = {f"{split}_ppl": None if metrics is None else round(metrics[f"{split}_ppl"], 2) for split in ("valid", "test")}
        keras_ppl = perplexity(keras.ops.convert_to_numpy(model(ids[None]))[0], ids)
        for quantize in precisions:
            path = pathlib.Path(tmp) / f"{width}_{variant}_{quantize or 'float'}.tflite"
            start = time.perf_counter()
            ks.export.tflite(model, path, quantize=quantize, sparse=kind != "dense", representative_ids=corpus.valid)
            runner = ks.export.TFLiteRunner(path)
            row = {"width": width, "model": kind if kind == "dense" else f"{kind} {density}", "precision": quantize or "float32", "weights": weights,
                   "path": str(path), "bytes": path.stat().st_size, "densify": "DENSIFY" in ks.export.operators(path), "kernels": runner.resolver,
                   "blocks16": any(w["block"] == 16 for w in ks.export.weight_tensors(path)),
                   "export_s": round(time.perf_counter() - start, 1), "keras_ppl": round(keras_ppl, 2), "tflite_ppl": round(runner.score(ids), 2), **quality}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "path"}, flush=True)
        del model
    return rows


def kernel_choices(row):
    """XNNPack and built-in, except for 1x16 block-sparse weights, on which XNNPack crashed (SIGSEGV, 2x650 here)."""
    return ("builtin",) if row["blocks16"] else ("xnnpack", "builtin")


def measure(rows):
    """Latency (interleaved, one process per thread count) and runtime memory (one fresh process per file)."""
    for threads in (1, 2):
        files = [[r["path"], kernels] for r in rows for kernels in kernel_choices(r)]
        timing = probe("latency", threads, files, FLAGS.rounds, FLAGS.steps_per_round)
        results = iter(zip(timing["ms"], timing["ran_as_asked"]))
        for r in rows:
            r[f"ms_t{threads}_xnnpack"] = r[f"xnnpack_ran_t{threads}"] = None
            for kernels in kernel_choices(r):
                ms, ran = next(results)
                r[f"ms_t{threads}_{kernels}"] = round(ms, 3)
                if kernels == "xnnpack":
                    r[f"xnnpack_ran_t{threads}"] = ran
            r[f"ms_t{threads}"] = r[f"ms_t{threads}_{r['kernels']}"]
    baseline = probe("memory", 1, [])["rss_kb"]
    for r in rows:
        used = probe("memory", 1, [[r["path"], r["kernels"], FLAGS.memory_steps]])["rss_kb"]
        r["runtime_mb"] = round((used - baseline) / 1024, 1)


def relate(rows):
    for r in rows:
        same = [s for s in rows if s["width"] == r["width"]]
        dense = {s["precision"]: s for s in same if s["model"] == "dense"}
        r["vs_dense_float_bytes"] = round(r["bytes"] / dense["float32"]["bytes"], 3)
        r["vs_dense_dynamic_bytes"] = round(r["bytes"] / dense["dynamic"]["bytes"], 3)
        for threads in (1, 2):
            fastest = min(min(s[f"ms_t{threads}_xnnpack"], s[f"ms_t{threads}_builtin"]) for s in dense.values())
            r[f"fastest_dense_t{threads}_ms"] = fastest
            r[f"vs_fastest_dense_t{threads}"] = round(r[f"ms_t{threads}"] / fastest, 2)


def table(rows):
    header = ("| W | model | precision | weights | MB | vs dense float | vs dense dynamic | DENSIFY | runner kernels | ms/token 1 thr | vs fastest dense | "
              "ms 2 thr | vs fastest dense | 1 thr XNNPack / built-in | runtime MB | ppl Keras / TFLite | valid / test ppl |")
    lines = [header, "|---" * 17 + "|"]
    for r in rows:
        quality = "-" if r["test_ppl"] is None else f"{r['valid_ppl']} / {r['test_ppl']}"
        xnn = "not run" if r["ms_t1_xnnpack"] is None else f"{r['ms_t1_xnnpack']}" + ("" if r["xnnpack_ran_t1"] else " (fell back)")
        lines.append(f"| {r['width']} | {r['model']} | {r['precision']} | {r['weights']} | {r['bytes'] / 1e6:.2f} | {r['vs_dense_float_bytes']} | {r['vs_dense_dynamic_bytes']} | "
                     f"{'yes' if r['densify'] else 'no'} | {r['kernels']} | {r['ms_t1']} | {r['vs_fastest_dense_t1']} | {r['ms_t2']} | {r['vs_fastest_dense_t2']} | "
                     f"{xnn} / {r['ms_t1_builtin']} | {r['runtime_mb']} | {r['keras_ppl']} / {r['tflite_ppl']} | {quality} |")
    return "\n".join(lines)


def acceptance(rows):
    """The issue's targets for the 2x650 LM, dynamic-range 1x16 blocks at density 0.33."""
    dense = next((r for r in rows if r["width"] == 650 and r["model"] == "dense" and r["precision"] == "dynamic"), None)
    block = next((r for r in rows if r["width"] == 650 and r["model"] == "1x16 0.33" and r["precision"] == "dynamic"), None)
    if dense is None or block is None:
        return []
    checks = [("latency 1 thread <= 0.6x the fastest dense export", block["vs_fastest_dense_t1"], block["vs_fastest_dense_t1"] <= 0.6),
              ("file <= 0.5x dense dynamic-range", block["vs_dense_dynamic_bytes"], block["vs_dense_dynamic_bytes"] <= 0.5),
              ("file <= 0.15x dense float", block["vs_dense_float_bytes"], block["vs_dense_float_bytes"] <= 0.15),
              ("runtime memory <= dense dynamic-range's", f"{block['runtime_mb']} vs {dense['runtime_mb']} MB", block["runtime_mb"] <= dense["runtime_mb"])]
    return [f"* {name}: {value} -> {'met' if ok else 'MISSED'}" for name, value, ok in checks]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    corpus = ks.data.load_corpus("ptb", FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.work_dir:
            tmp = pathlib.Path(FLAGS.work_dir)
            tmp.mkdir(parents=True, exist_ok=True)
        if FLAGS.train_epochs:
            train_runs(map(int, FLAGS.widths))
        for width in map(int, FLAGS.widths):
            width_rows = export_width(width, corpus, tmp)
            measure(width_rows)
            rows += width_rows
    relate(rows)
    for r in rows:
        del r["path"]
    command = ("python -m bench.export " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    weights = sorted({r["weights"] for r in rows})
    notes = (f"Command: `{command}`. Weights: {'; '.join(weights)}. Latency: `TFLiteRunner.step`, median of {FLAGS.rounds} interleaved rounds of {FLAGS.steps_per_round} steps "
             f"per file in one process; runtime memory: peak RSS of a fresh LiteRT process that loads the file with the runner's kernels and runs "
             f"{FLAGS.memory_steps} steps, minus the same process without a model; perplexity of the first {FLAGS.ppl_tokens} PTB test tokens "
             f"by Keras and by the file (a parity check); a trained run's validation and test perplexity: Keras's, on the whole splits. XNNPack is not timed on 1x16 block-sparse files: it crashed on them (SIGSEGV, 2x650). "
             f"{machine.describe()}")
    checks = acceptance(rows)
    text = table(rows) + "\n\n" + notes + ("\n\nAcceptance (2x650, dynamic-range 1x16 blocks, density 0.33):\n" + "\n".join(checks) if checks else "") + "\n"
    print("\n" + text)
    record = {"command": command, "machine": machine.record(), "rounds": FLAGS.rounds,
              "steps_per_round": FLAGS.steps_per_round, "memory_steps": FLAGS.memory_steps, "ppl_tokens": FLAGS.ppl_tokens, "rows": rows, "acceptance": checks}
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(out.with_suffix(".md"), lambda temporary: temporary.write_text(text))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    app.run(main)

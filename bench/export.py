r"""Exported artifacts of PTB language models: size, memory, latency, perplexity.

For 2 x W LSTM language models (W = 200, 650; vocabulary 10,000), dense and 67%
sparse (density 0.33 in every matrix), each trained for `--train_steps` batches on
PTB so perplexities mean something, writes float and int8 TFLite files and measures:

* file size, and the whole-file ratios sparse float / dense float and
  int8 / dense float; how many matrices are stored sparse-encoded, and the largest
  stored/dense byte ratio among them (values plus index arrays);
* runtime memory: peak RSS of a fresh process (LiteRT only, no TensorFlow) that
  loads the model and runs 10 steps, minus that of a process that only imports
  LiteRT;
* per-token latency (median of `--latency_steps` single steps) with 1 and 2
  threads, XNNPack on and off (int8 + sparse cannot use XNNPack here: the runner
  falls back to the built-in kernels, reported as such);
* perplexity on the first `--ppl_tokens` tokens of the PTB test split.

    python -m bench.export
    python -m bench.export --widths=200 --train_steps=100 --ppl_tokens=2000

Prints a markdown table, writes bench/results/export.json and bench/results/export.md.
"""

import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402

import keras_selfish as ks  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["200", "650"], "LSTM widths.")
flags.DEFINE_integer("train_steps", 200, "Training batches before export.")
flags.DEFINE_integer("ppl_tokens", 5000, "Test tokens scored per artifact.")
flags.DEFINE_integer("latency_steps", 300, "Timed single steps per latency setting.")
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data"), "Directory with ptb/.")
flags.DEFINE_string("tfds_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_string("output", str(pathlib.Path(__file__).parent / "results" / "export.json"), "Result file (the .md goes next to it).")

PROBE = r"""
import json, resource, sys, time
import numpy as np
from ai_edge_litert import interpreter as litert
path, threads, xnnpack, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
if path == "-":
    print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    sys.exit()
resolvers = [litert.OpResolverType.AUTO] if xnnpack else []
resolvers.append(litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
for resolver in resolvers:
    try:
        interpreter = litert.Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner()
        inputs = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
        runner(**inputs)
        break
    except (RuntimeError, ValueError):
        continue
times = []
for t in range(steps):
    inputs["token"] = np.array([t % 100], np.int32)
    start = time.perf_counter()
    outputs = runner(**inputs)
    times.append(time.perf_counter() - start)
    inputs.update({k: v for k, v in outputs.items() if k != "logits"})
print(json.dumps({"ms": 1000 * float(np.median(times[10:])), "xnnpack": resolver == litert.OpResolverType.AUTO,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def probe(path, threads=1, xnnpack=True, steps=10):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(path), str(threads), "1" if xnnpack else "0", str(steps)], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def trained_lm(width, sparse, corpus):
    keras.utils.set_random_seed(0)
    model = ks.models.language_model("lstm", len(corpus.vocabulary), emsize=width, nhid=width, batch_size=20, seq_len=35, stateful=True, vocabulary=corpus.vocabulary.itos)
    if sparse:
        ks.sparsity.initialize(model, 0.33, seed=0)
    model.compile(keras.optimizers.SGD(20.0, global_clipnorm=0.25), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ks.data.lm_batches(corpus.train, 20, 35).take(FLAGS.train_steps), epochs=1, verbose=0, shuffle=False)
    return model


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    corpus = ks.data.load_corpus("ptb", FLAGS.data_dir or None, tfds_dir=FLAGS.tfds_dir)
    test_ids, valid_ids = corpus.test[: FLAGS.ppl_tokens], corpus.valid
    baseline_kb = probe("-")["rss_kb"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in map(int, FLAGS.widths):
            for sparse in (False, True):
                model = trained_lm(width, sparse, corpus)
                for quantize in (None, "int8"):
                    name = f"{width}_{'sparse' if sparse else 'dense'}_{quantize or 'float'}"
                    path = ks.export.tflite(model, pathlib.Path(tmp) / f"{name}.tflite", quantize=quantize, sparse=sparse, representative_ids=valid_ids)
                    row = {"width": width, "model": "sparse 0.33" if sparse else "dense", "precision": quantize or "float32", "bytes": path.stat().st_size}
                    matrices = [w for w in ks.export.weight_tensors(path) if w["op"] != "GATHER"]
                    row["sparse_matrices"] = f"{sum(w['sparse'] for w in matrices)}/{len(matrices)}"
                    row["max_matrix_ratio"] = round(max(w["bytes"] / w["dense_bytes"] for w in matrices), 3)
                    memory = probe(path)
                    row["runtime_mb"] = round((memory["rss_kb"] - baseline_kb) / 1024, 1)
                    for threads in (1, 2):
                        for xnnpack in (True, False):
                            timing = probe(path, threads, xnnpack, FLAGS.latency_steps)
                            row[f"ms_t{threads}_{'xnn' if xnnpack else 'builtin'}"] = round(timing["ms"], 3)
                            if xnnpack:
                                row[f"xnnpack_used_t{threads}"] = timing["xnnpack"]
                    row["test_ppl"] = round(ks.export.TFLiteRunner(path, use_xnnpack=False).score(test_ids), 2)
                    rows.append(row)
                    print(row, flush=True)
    for row in rows:
        dense_float = next(r["bytes"] for r in rows if r["width"] == row["width"] and r["model"] == "dense" and r["precision"] == "float32")
        row["size_vs_dense_float"] = round(row["bytes"] / dense_float, 3)
    command = "python -m bench.export " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    header = ("| width | model | precision | file bytes | vs dense float | sparse-encoded matrices | largest matrix bytes / dense | runtime MB "
              "| ms/token 1 thr XNNPack | 1 thr builtin | 2 thr XNNPack | 2 thr builtin | test ppl |")
    lines = [header, "|---" * 13 + "|"]
    for r in rows:
        xnn1 = f"{r['ms_t1_xnn']}" + ("" if r["xnnpack_used_t1"] else " (fell back to builtin)")
        xnn2 = f"{r['ms_t2_xnn']}" + ("" if r["xnnpack_used_t2"] else " (fell back to builtin)")
        lines.append(f"| {r['width']} | {r['model']} | {r['precision']} | {r['bytes']:,} | {r['size_vs_dense_float']} | {r['sparse_matrices']} | {r['max_matrix_ratio']} | {r['runtime_mb']} | {xnn1} | {r['ms_t1_builtin']} | {xnn2} | {r['ms_t2_builtin']} | {r['test_ppl']} |")
    table = "\n".join(lines)
    print("\n" + table + f"\n\nCommand: {command.strip()}")
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command.strip(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "train_steps": FLAGS.train_steps, "ppl_tokens": FLAGS.ppl_tokens, "latency_steps": FLAGS.latency_steps, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"{table}\n\nCommand: `{command.strip()}`; perplexity on the first {FLAGS.ppl_tokens} PTB test tokens after {FLAGS.train_steps} training batches.\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    app.run(main)

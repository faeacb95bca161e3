r"""Where the per-token time of an exported 2 x W LSTM LM (vocabulary 10,000) goes.

Models (random weights, 1 thread): dense, exported dynamic-range and int8 (XNNPack,
the kernels `bench.export` finds fastest for dense), and 1x16 block-sparse at
`--density` (`ks.sparsity.initialize(..., block_size=16)`), dynamic-range (built-in
kernels, which run it sparse). Per model, files cut from the same `InferenceModel`:

* step: the file `ks.export.tflite` writes, timed through `TFLiteRunner.step` (what
  users run) and through `Interpreter.invoke` alone (inputs set once);
* no lookup: the step graph from the embedding output on (a float `x` input);
* matmuls: its FULLY_CONNECTED ops alone, each fed its own input;

and `empty`: the step's inputs and outputs with a few tiny ops, through
`TFLiteRunner.step` and `invoke`: the runner's and the interpreter's floor. The
differences give the runner's per-call cost, the embedding lookup, and the
elementwise ops (gates, padding, concatenation). All files are loaded in one
process and timed in interleaved rounds; wall-clock and this thread's CPU time
(medians of the rounds' means; the CPU time is less hit by other jobs).

    python -m bench.export_breakdown
    python -m bench.export_breakdown --width=200 --rounds=20

Prints a table, writes bench/results/export_breakdown.{json,md}.
"""

import json
import os
import pathlib
import shlex
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_selfish as ks  # noqa: E402
from bench import machine  # noqa: E402
from keras_selfish.export.inference import InferenceModel  # noqa: E402
from keras_selfish.files import atomic_write  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 650, "LSTM width (2 layers, emsize = nhid).")
flags.DEFINE_float("density", 0.33, "Density of the 1x16 block-sparse model.")
flags.DEFINE_integer("rounds", 40, "Interleaved timing rounds.")
flags.DEFINE_integer("steps_per_round", 10, "Calls per file per round.")
flags.DEFINE_string("output", str(pathlib.Path(__file__).parent / "results" / "export_breakdown.json"), "Result file (the .md goes next to it).")
VOCAB = 10000


def convert(function, inference, sparse):
    """Dynamic-range flatbuffer of a tf.function, with the options `ks.export.tflite` uses."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], inference)
    converter.optimizations = ([tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []) + [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def variants(inference, width, sparse):
    """`{name: flatbuffer}` of the no-lookup and matmuls-only cuts of the step graph."""
    states = [tf.TensorSpec([1, size], tf.float32, name=f"state_{i}") for i, size in enumerate(inference.state_sizes)]
    x_spec = tf.TensorSpec([1, width], tf.float32, name="x")

    @tf.function(input_signature=[x_spec, *states])
    def no_lookup(x, *states):
        new = []
        for i, layer in enumerate(inference.recurrent):
            x, layer_states = layer.step(x, list(states[2 * i : 2 * i + 2]))
            new += layer_states
        return {"logits": inference.decoder_kernel(x) + inference.decoder_bias, **{f"state_{i}": s for i, s in enumerate(new)}}

    @tf.function(input_signature=[x_spec, states[0], states[2]])
    def matmuls(x, h0, h1):
        out = {}
        for i, (layer, inputs) in enumerate(zip(inference.recurrent, [(x, h0), (h0, h1)])):
            if layer.joint is not None:
                out[f"z{i}"] = layer.joint(*inputs)
            else:
                out[f"z{i}"], out[f"r{i}"] = layer.kernel(inputs[0]), layer.recurrent_kernels[0](inputs[1])
        return {**out, "logits": inference.decoder_kernel(h1)}

    return {"no lookup": convert(no_lookup, inference, sparse), "matmuls": convert(matmuls, inference, sparse)}


def empty_model(width):
    specs = [tf.TensorSpec([1], tf.int32, name="token")] + [tf.TensorSpec([1, width], tf.float32, name=f"state_{i}") for i in range(4)]

    @tf.function(input_signature=specs)
    def step(token, *states):
        logits = tf.tile(states[0][:, :1] + tf.cast(token, tf.float32)[:, None], [1, VOCAB])
        return {"logits": logits, **{f"state_{i}": s * 0.5 for i, s in enumerate(states)}}

    return tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module()).convert()


class Invoker:
    """`Interpreter.invoke` alone, on random inputs set once (nonzero: the hybrid kernels skip zero inputs)."""

    def __init__(self, path, kernels):
        from ai_edge_litert import interpreter as litert

        resolver = litert.OpResolverType.AUTO if kernels == "xnnpack" else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = litert.Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in self.interpreter.get_input_details():
            value = np.full(d["shape"], 7, d["dtype"]) if d["dtype"] == np.int32 else (0.5 * rng.standard_normal(d["shape"])).astype(d["dtype"])
            self.interpreter.set_tensor(d["index"], value)

    def step(self, token):
        self.interpreter.invoke()


def main(argv):
    del argv
    width = FLAGS.width
    rows = []  # (model, part, kernels, path, how)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for model_name, sparse, precisions in (("dense", False, ["dynamic", "int8"]), (f"1x16 {FLAGS.density}", True, ["dynamic"])):
            keras.utils.set_random_seed(0)
            model = ks.models.language_model("lstm", VOCAB, emsize=width, nhid=width, nlayers=2, batch_size=1, seq_len=1)
            ids = np.random.default_rng(0).integers(0, VOCAB, 400).astype("int32")
            if sparse:
                ks.sparsity.initialize(model, FLAGS.density, seed=0, block_size=16)
            kernels = "builtin" if sparse else "xnnpack"
            for quantize in precisions:
                path = tmp / f"{model_name}_{quantize}_step.tflite".replace(" ", "_")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ks.export.tflite(model, path, quantize=quantize, sparse=sparse, representative_ids=ids)
                rows += [(model_name, f"step {quantize}", kernels, path, "runner"), (model_name, f"step {quantize}", kernels, path, "invoke")]
            inference = InferenceModel.from_keras(model, sparse=sparse, quantize="dynamic")
            for part, flatbuffer in variants(inference, width, sparse).items():
                path = tmp / f"{model_name}_{part}.tflite".replace(" ", "_")
                path.write_bytes(flatbuffer)
                rows.append((model_name, f"{part} dynamic", kernels, path, "invoke"))
        path = tmp / "empty.tflite"
        path.write_bytes(empty_model(width))
        rows += [("empty", "step", "builtin", path, "runner"), ("empty", "step", "builtin", path, "invoke")]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            callers = [ks.export.TFLiteRunner(p, use_xnnpack=k == "xnnpack") if how == "runner" else Invoker(p, k) for _, _, k, p, how in rows]
        for caller in callers:
            for t in range(10):
                caller.step(t)
        wall, cpu = [[] for _ in rows], [[] for _ in rows]
        for r in range(FLAGS.rounds):
            for i, caller in enumerate(callers):
                start, start_cpu = time.perf_counter(), time.thread_time()
                for t in range(FLAGS.steps_per_round):
                    caller.step((r * FLAGS.steps_per_round + t) % 1000)
                wall[i].append(1e6 * (time.perf_counter() - start) / FLAGS.steps_per_round)
                cpu[i].append(1e6 * (time.thread_time() - start_cpu) / FLAGS.steps_per_round)
    results = [{"model": m, "graph": part, "kernels": k, "called_by": "TFLiteRunner.step" if how == "runner" else "invoke",
                "wall_us": round(float(np.median(w)), 1), "cpu_us": round(float(np.median(c)), 1)} for (m, part, k, _, how), w, c in zip(rows, wall, cpu)]
    fastest = {key: min(r[key] for r in results if r["model"] == "dense" and r["graph"].startswith("step") and r["called_by"] == "TFLiteRunner.step")
               for key in ("wall_us", "cpu_us")}
    lines = ["| model | graph | kernels | called by | us/call wall | us/call CPU | CPU vs fastest dense step |", "|---" * 7 + "|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['graph']} | {r['kernels']} | {r['called_by']} | {r['wall_us']} | {r['cpu_us']} | {r['cpu_us'] / fastest['cpu_us']:.2f} |")
    command = ("python -m bench.export_breakdown " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    text = "\n".join(lines) + (f"\n\nCommand: `{command}`. 2 x {width} LSTM LM, vocabulary {VOCAB}, random weights, 1 thread; medians of {FLAGS.rounds} "
                               f"interleaved rounds of {FLAGS.steps_per_round} calls per file. {machine.describe()}\n")
    print("\n" + text)
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "machine": machine.record(), "width": width, "density": FLAGS.density,
              "rounds": FLAGS.rounds, "steps_per_round": FLAGS.steps_per_round, "rows": results}
    atomic_write(out, lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(out.with_suffix(".md"), lambda temporary: temporary.write_text(text))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    app.run(main)

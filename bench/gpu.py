r"""GPU benchmark: the sparse LM step (XLA) against stock cuDNN LSTM, a 2 x 1500 topology update, SNT-ASGD.

    python -m bench.gpu                       # on a machine with a GPU; elsewhere prints "no GPU: ..." and exits 0
    python -m bench.gpu --steps=50

On a GPU it runs the existing benchmarks there, each in its own process:

* `bench.throughput --widths=650,1500 --jit_compile=true`: the train step of the
  sparse PTB LM (MaskedEmbedding, 2 x SparseLSTM, MaskedDense at density 0.33; XLA,
  so the fused LSTM loop and SNT-ASGD's averaging run compiled on the GPU) against
  the stock Keras LM (`keras.layers.LSTM`, cuDNN), and SNT-ASGD with averaging on
  against SGD on the sparse model;
* `bench.mask_update --widths=1500 --drop_rates=0.8`: one Selfish-RNN topology
  update of the 2 x 1500 LM with its variables on the GPU (masks, weights and
  momentum rewritten by whole-tensor TensorFlow ops, the path of every non-CPU
  variable).

It prints one table, the exact command, and writes bench/results/gpu.{md,json}.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["650", "1500"], "LSTM widths of the step benchmark.")
flags.DEFINE_integer("steps", 50, "Timed train steps per model (bench.throughput --steps).")
flags.DEFINE_integer("repeats", 3, "Timed topology updates (bench.mask_update --repeats).")
flags.DEFINE_string("output_dir", str(pathlib.Path(__file__).parent / "results"), "Where gpu.md and gpu.json go.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def run(module, *args, output):
    """Run `python -m <module> <args> --output=<output>` from the repository root; its JSON result."""
    command = [sys.executable, "-m", module, *args, f"--output={output}"]
    print("$", " ".join(shlex.quote(a) for a in command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return json.loads(pathlib.Path(output).read_text())


def table(steps, update):
    lines = [
        "| width | stock cuDNN ms/step | sparse XLA ms/step | sparse / stock | SNT-ASGD / SGD |",
        "|------:|--------------------:|-------------------:|---------------:|---------------:|",
    ]
    for r in steps["results"]:
        lines.append(f"| {r['width']} | {r['stock']['ms_per_step']:.2f} | {r['sparse']['ms_per_step']:.2f} | {r['ratio']:.3f} | {r['ratio_sntasgd']:.3f} |")
    for r in update["rows"]:
        lines.append(f"\nTopology update of the 2 x {r['width']} LM (drop rate {r['drop_rate']}, {2 * r['moved']:,} weights moved): "
                     f"{r['seconds']:.3f} s (first {r['first_update_seconds']:.3f} s).")
    return "\n".join(lines)


def main(argv):
    del argv
    found = gpus()
    if not found:
        print("no GPU: TensorFlow sees no GPU on this machine (tf.config.list_physical_devices('GPU') is empty); "
              "bench.gpu times the sparse LM, a topology update and SNT-ASGD on a GPU only. Nothing was written.")
        return
    command = "python -m bench.gpu " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory() as scratch:
        steps = run("bench.throughput", f"--widths={','.join(FLAGS.widths)}", "--jit_compile=true", f"--steps={FLAGS.steps}",
                    output=f"{scratch}/throughput.json")
        update = run("bench.mask_update", "--widths=1500", "--drop_rates=0.8", f"--repeats={FLAGS.repeats}", output=f"{scratch}/mask_update.json")
    text = table(steps, update)
    result = {"command": command.strip(), "gpus": [g.name for g in found], "steps": steps, "topology_update": update}
    out = pathlib.Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu.md").write_text(f"# bench.gpu\n\nCommand: `{command.strip()}`\n\nGPUs: {', '.join(result['gpus'])}\n\n{text}\n")
    print(text)
    print(f"\nCommand: {command.strip()}\nWrote {out / 'gpu.md'} and {out / 'gpu.json'}")


if __name__ == "__main__":
    app.run(main)

r"""Train-step throughput: sparse Selfish-RNN LM versus the stock Keras LM.

PTB-shaped language model: Embedding -> 2 x LSTM -> Dense(vocab), batch 20,
sequence 35, SGD with global-norm clipping 0.25, softmax cross-entropy. The sparse
model trains with ks.optimizers.SNTASGD before averaging starts (plain SGD, as
`ks.runs` trains; one fused pass per weight), the stock one with
keras.optimizers.SGD. The sparse model uses MaskedEmbedding,
SparseLSTM and MaskedDense with every matrix at density 0.33; the stock model uses
keras.layers.Embedding / LSTM / Dense. The sparse model is trained on
ks.losses.SparseSoftmaxCrossEntropy (as `ks.runs` trains), the stock one on
keras.losses.SparseCategoricalCrossentropy(from_logits=True). Both models live in the same process and are
timed step by step in turn (stock, sparse, ... after warm-up), and the median step
time of each is reported, so drifts in machine speed hit both alike.

    python -m bench.throughput                     # widths 200 and 650
    python -m bench.throughput --widths=200 --steps=20

Also times the same sparse model on stock Keras's loss (`sparse_keras_loss`, the
step before ks.losses), and the sparse model trained with SNT-ASGD with averaging
on (the per-element sparse averaging of every weight at every step) against the
same model with SGD.

Also times the recurrent stack alone (forward + backward of the 2 LSTM layers on
float inputs, no embedding/softmax/optimizer): the part of the step the layer
replaces, without the 10k-way softmax that dominates the whole step.

Prints a table and writes bench/results/throughput.json.

With --recurrent it times instead the other recurrent layers alone, forward +
backward on float inputs at density 0.33, each with its fused (XLA, hand-written
BPTT) loop against the same layer forced onto the generic `keras_backend.rnn` loop,
interleaved step by step in one process; GRU also against stock `keras.layers.GRU`.
The result goes under "recurrent" in the same file (the other keys are kept):

    python -m bench.throughput --recurrent=gru,rhn     # GRU 2 x 650; RHN 830, depth 10

With --mode=trainer it times what users run instead (bench/trainer_path.py): the
`train_lm` model and callbacks over real PTB batches, beside the same model in a
bare `model.fit`, its compiled step alone and a stock Keras LM, interleaved round
by round, with a profile of one trainer batch; the result goes under "trainer" in
the same file (the step tables are kept):

    python -m bench.throughput --mode=trainer --trainer_batches=40 --rounds=3

With --mode=profile it splits one sparse SGD step into its parts, each compiled
alone, against this CPU's measured matmul peak (bench/step_profile.py), under
"profile" in the same file:

    python -m bench.throughput --mode=profile --rounds=3
    # another checkout's library (e.g. today's main) through this script, alternated with the above:
    mkdir -p /tmp/main-lib && ln -sfn /work/main/keras_selfish /tmp/main-lib/ && ln -sfn $PWD/bench /tmp/main-lib/
    (cd /tmp/main-lib && python -m bench.throughput --mode=trainer --variants=trainer --label=main --output=$OLDPWD/bench/results/throughput.json)
"""

import itertools
import json
import os
import pathlib
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_selfish as ks  # noqa: E402
from bench import machine  # noqa: E402
from bench import step_profile  # noqa: E402
from bench import trainer_path  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["200", "650"], "LSTM widths (embedding size = width).")
flags.DEFINE_integer("steps", 150, "Timed train steps per model, interleaved one by one.")
flags.DEFINE_integer("warmup", 5, "Untimed steps before timing.")
flags.DEFINE_integer("batch_size", 20, "Batch size.")
flags.DEFINE_integer("seq_len", 35, "Sequence length (BPTT).")
flags.DEFINE_integer("vocab", 10000, "Vocabulary size.")
flags.DEFINE_float("density", 0.33, "Density of every sparse matrix.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the sparse models' train steps (the stock LSTM keeps its cuDNN/Keras path).")
flags.DEFINE_list("recurrent", [], "Time these recurrent layers alone, fused vs generic loop: "
                  "gru (2 x 650), gru_reset_before (2 x 650, reset_after=False), rhn (830, depth 10), "
                  "rhn_uncoupled (830, depth 10, couple_carry=False).")
flags.DEFINE_integer("recurrent_steps", 8, "--recurrent: timed steps per variant, interleaved one by one.")
flags.DEFINE_enum("mode", "step", ["step", "trainer", "profile"],
                  "step: the train-step tables; trainer: train_lm's real path; profile: the parts of one sparse step (bench/step_profile.py).")
flags.DEFINE_integer("trainer_batches", 40, "trainer mode: batches per variant per round.")
flags.DEFINE_integer("rounds", 3, "trainer mode: timed rounds (after one warm-up round); profile mode: 10x this many.")
flags.DEFINE_list("variants", ["trainer", "bare_fit", "bare_step", "stock_fit"], "trainer mode: variants to time.")
flags.DEFINE_string("label", "trainer", "trainer mode: key of the result in the file (e.g. 'main' for today's main).")
flags.DEFINE_string("data_dir", str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"), "trainer mode: directory with ptb/.")
flags.DEFINE_string("output", str(pathlib.Path(__file__).parent / "results" / "throughput.json"), "Result file.")

# The authors' PyTorch code on this machine, sparse 2x200, batch 20, bptt 35
# (validation excluded), as reported in the issue: 150-170 ms per batch.
REFERENCE_PYTORCH = {"width": 200, "ms_per_step": "150-170", "tokens_per_s": 4400}


def build_lm(width, sparse, averaging=False, keras_loss=False):
    """The LM; `keras_loss`: the sparse model on stock Keras's loss (the step before ks.losses)."""
    inputs = keras.Input((FLAGS.seq_len,), batch_size=FLAGS.batch_size, dtype="int32")
    if sparse:
        x = ks.layers.MaskedEmbedding(FLAGS.vocab, width)(inputs)
        x = ks.layers.SparseLSTM(width, return_sequences=True)(x)
        x = ks.layers.SparseLSTM(width, return_sequences=True)(x)
        outputs = ks.layers.MaskedDense(FLAGS.vocab)(x)
    else:
        x = keras.layers.Embedding(FLAGS.vocab, width)(inputs)
        x = keras.layers.LSTM(width, return_sequences=True)(x)
        x = keras.layers.LSTM(width, return_sequences=True)(x)
        outputs = keras.layers.Dense(FLAGS.vocab)(x)
    model = keras.Model(inputs, outputs)
    if sparse:
        ks.sparsity.initialize(model, FLAGS.density, seed=0)
    optimizer = ks.optimizers.SNTASGD(1.0, global_clipnorm=0.25) if sparse else keras.optimizers.SGD(1.0, global_clipnorm=0.25)
    ks_loss = sparse and not keras_loss
    loss = ks.losses.SparseSoftmaxCrossEntropy() if ks_loss else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss,
                  jit_compile=FLAGS.jit_compile if sparse else "auto")
    if averaging:
        optimizer.build(model.trainable_variables)
        optimizer.start_averaging()
    return model


def train_step(model, batches):
    """One `train_on_batch` call per invocation, cycling through `batches`."""
    cycle = itertools.cycle(batches)
    return lambda: model.train_on_batch(*next(cycle))


def recurrent_stack_step(width, sparse):
    """A compiled forward+backward step of two stacked LSTM layers."""
    cls = ks.layers.SparseLSTM if sparse else keras.layers.LSTM
    stack = keras.Sequential([cls(width, return_sequences=True) for _ in range(2)])
    x = tf.random.stateless_normal((FLAGS.batch_size, FLAGS.seq_len, width), seed=(0, 0))
    stack(x)
    if sparse:
        ks.sparsity.initialize(stack, FLAGS.density, seed=0)
    return gradient_step(stack, x)


def gradient_step(stack, x):
    """A compiled forward+backward of `stack` on `x`: the gradient of the outputs' sum w.r.t. its weights."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(stack(x, training=True))
        return tape.gradient(loss, stack.trainable_weights)

    return step


# --recurrent parts: layer class, number of stacked layers, width, layer kwargs.
RECURRENT_PARTS = {
    "gru": (ks.layers.SparseGRU, 2, 650, {}),
    "gru_reset_before": (ks.layers.SparseGRU, 2, 650, {"reset_after": False}),
    "rhn": (ks.layers.RHN, 1, 830, {"depth": 10}),
    "rhn_uncoupled": (ks.layers.RHN, 1, 830, {"depth": 10, "couple_carry": False}),
}


def recurrent_layers_step(part, variant):
    """A compiled forward+backward step of a `RECURRENT_PARTS` stack.

    variant: "fused" (the layer as users get it), "generic" (the same layer with its
    fused loop switched off: `keras_backend.rnn` steps the cell) or "stock" (the
    stock Keras layer of the same class, GRU only).
    """
    cls, layers, width, kwargs = RECURRENT_PARTS[part]
    if variant == "stock":
        stack = keras.Sequential([keras.layers.GRU(width, return_sequences=True, **kwargs) for _ in range(layers)])
    else:
        stack = keras.Sequential([cls(width, return_sequences=True, **kwargs) for _ in range(layers)])
    x = tf.random.stateless_normal((FLAGS.batch_size, FLAGS.seq_len, width), seed=(0, 0))
    stack(x)
    if variant != "stock":
        ks.sparsity.initialize(stack, FLAGS.density, seed=0)
    if variant == "generic":
        for layer in stack.layers:
            layer.cell.fused_loop = lambda training: None
    else:
        assert variant == "stock" or all(layer.cell.fused_loop(True) is not None for layer in stack.layers)
    return gradient_step(stack, x)


def measure_recurrent(part):
    variants = ["fused", "generic"] + (["stock"] if RECURRENT_PARTS[part][0] is ks.layers.SparseGRU else [])
    steps = {v: recurrent_layers_step(part, v) for v in variants}
    for fn in steps.values():
        for _ in range(FLAGS.warmup):
            fn()
    times = {v: [] for v in variants}
    for _ in range(FLAGS.recurrent_steps):
        for v, fn in steps.items():
            times[v].append(time_call(fn))
    cls, layers, width, kwargs = RECURRENT_PARTS[part]
    tokens = FLAGS.batch_size * FLAGS.seq_len
    result = {"part": part, "layer": cls.__name__, "layers": layers, "width": width, "kwargs": kwargs,
              **{v: summarize(t, tokens) for v, t in times.items()}}
    # Ratio of the medians, and the median of the per-round ratios (each round times the variants back to back).
    for v in variants[1:]:
        result[f"{v}_over_fused"] = {
            "of_medians": round(result[v]["ms_per_step"] / result["fused"]["ms_per_step"], 3),
            "median_per_round": round(float(np.median(np.array(times[v]) / np.array(times["fused"]))), 3),
        }
    return result


def recurrent_main(command):
    """--recurrent: time, print and record the recurrent layers alone."""
    results = [measure_recurrent(part) for part in FLAGS.recurrent]
    print(f"\n{'part':>17} {'shape':>13} {'fused ms':>9} {'generic ms':>11} {'stock ms':>9} "
          f"{'generic/fused':>14} {'per round':>10} {'stock/fused':>12}")
    for r in results:
        shape = f"{r['layers']} x {r['width']}" + (f" d{r['kwargs']['depth']}" if "depth" in r["kwargs"] else "")
        stock = f"{r['stock']['ms_per_step']:>9.1f}" if "stock" in r else f"{'-':>9}"
        stock_ratio = f"{r['stock_over_fused']['of_medians']:>12.3f}" if "stock" in r else f"{'-':>12}"
        print(f"{r['part']:>17} {shape:>13} {r['fused']['ms_per_step']:>9.1f} {r['generic']['ms_per_step']:>11.1f} {stock} "
              f"{r['generic_over_fused']['of_medians']:>14.3f} {r['generic_over_fused']['median_per_round']:>10.3f} {stock_ratio}")
    record = previous_record(pathlib.Path(FLAGS.output))
    record["recurrent"] = {
        "command": command, "machine": machine.record(),
        "config": {"batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len, "density": FLAGS.density,
                   "steps": FLAGS.recurrent_steps, "warmup": FLAGS.warmup,
                   "what": "forward + backward (gradient of sum of outputs w.r.t. the weights) of the recurrent layers alone, "
                           "tf.function, float inputs; fused vs the same layer on keras_backend.rnn, interleaved step by step"},
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "results": results,
    }
    return record


def time_call(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summarize(times, tokens):
    q25, ms, q75 = (1000 * float(q) for q in np.percentile(times, [25, 50, 75]))
    return {"ms_per_step": round(ms, 2), "tokens_per_s": round(tokens / ms * 1000, 1),
            "ms_q25": round(q25, 2), "ms_q75": round(q75, 2)}


def measure(width):
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.integers(0, FLAGS.vocab, (FLAGS.batch_size, FLAGS.seq_len)).astype("int32"),
            rng.integers(0, FLAGS.vocab, (FLAGS.batch_size, FLAGS.seq_len)).astype("int32"),
        )
        for _ in range(4)
    ]
    models = {
        "stock": build_lm(width, sparse=False),
        "sparse": build_lm(width, sparse=True),
        "sparse_sntasgd": build_lm(width, sparse=True, averaging=True),
        "sparse_keras_loss": build_lm(width, sparse=True, keras_loss=True),
    }
    steps = {name: train_step(model, batches) for name, model in models.items()}
    steps["stock_recurrent"] = recurrent_stack_step(width, sparse=False)
    steps["sparse_recurrent"] = recurrent_stack_step(width, sparse=True)
    for fn in steps.values():
        for _ in range(FLAGS.warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(FLAGS.steps):
        for name, fn in steps.items():
            times[name].append(time_call(fn))
    tokens = FLAGS.batch_size * FLAGS.seq_len
    result = {"width": width, **{name: summarize(t, tokens) for name, t in times.items()}}
    for part in ("", "_recurrent"):
        result[f"ratio{part}"] = round(
            result[f"sparse{part}"]["ms_per_step"] / result[f"stock{part}"]["ms_per_step"], 3)
    result["ratio_sntasgd"] = round(result["sparse_sntasgd"]["ms_per_step"] / result["sparse"]["ms_per_step"], 3)
    result["ratio_ks_loss"] = round(result["sparse"]["ms_per_step"] / result["sparse_keras_loss"]["ms_per_step"], 3)
    return result


def previous_record(out):
    return json.loads(out.read_text()) if out.is_file() else {}


def trainer_main(command):
    """--mode=trainer: time, print and record the trainer's real path."""
    result = trainer_path.measure(FLAGS.data_dir, FLAGS.trainer_batches, FLAGS.rounds, FLAGS.variants)
    print(f"\ntrainer path, {trainer_path.RECIPE}, {FLAGS.trainer_batches} batches x {FLAGS.rounds} rounds (interleaved)")
    print(f"{'variant':>10} {'ms/batch':>9} {'q25':>7} {'q75':>7} {'mean':>7} {'tokens/s':>9} {'s/round':>8}")
    for name in FLAGS.variants:
        r = result[name]
        print(f"{name:>10} {r['ms_per_batch']:>9.1f} {r['ms_q25']:>7.1f} {r['ms_q75']:>7.1f} {r['ms_mean']:>7.1f} "
              f"{r['tokens_per_s']:>9.0f} {r['seconds_per_round']:>8.1f}")
    for key, value in result.items():
        if key.startswith("ratio"):
            print(f"{key}: {value}")
    if "trainer_profile_ms" in result:
        print("one trainer batch, median ms of each part (manual loop):")
        for part, ms in result["trainer_profile_ms"].items():
            print(f"  {part:<40} {ms:>8.3f}")
    out = pathlib.Path(FLAGS.output)
    record = previous_record(out)
    record.setdefault("trainer", {})[FLAGS.label] = {
        "command": command, "machine": machine.record(), "library": str(pathlib.Path(ks.__file__).parent),
        "recipe": trainer_path.RECIPE, "batches_per_round": FLAGS.trainer_batches, "rounds": FLAGS.rounds,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **result,
    }
    return record


def profile_main(command):
    """--mode=profile: the parts of one sparse SGD step at each width, printed and recorded under "profile"."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    batch = tuple(rng.integers(0, FLAGS.vocab, (FLAGS.batch_size, FLAGS.seq_len)).astype("int32") for _ in range(2))
    out = pathlib.Path(FLAGS.output)
    record = previous_record(out)
    profiles = {"command": command, "machine": machine.record(), "rounds": 10 * FLAGS.rounds,
                "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for width in (int(w) for w in FLAGS.widths):
        model = build_lm(width, sparse=True)
        averaging = build_lm(width, sparse=True, averaging=True).optimizer
        spare = build_lm(width, sparse=True)
        stock = build_lm(width, sparse=False)
        profiles[str(width)] = step_profile.profile(model, batch, averaging, spare, stock, 10 * FLAGS.rounds)
        step_profile.print_table(width, profiles[str(width)])
    record["profile"] = profiles
    return record


def write_record(record, command):
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}  (command: {command})")


def main(argv):
    del argv
    command = ("python -m bench.throughput " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    if FLAGS.mode in ("trainer", "profile"):
        write_record((trainer_main if FLAGS.mode == "trainer" else profile_main)(command), command)
        return
    keras.utils.set_random_seed(0)
    if FLAGS.recurrent:
        write_record(recurrent_main(command), command)
        return
    results = [measure(int(w)) for w in FLAGS.widths]
    print(f"\n{'width':>6} {'part':>16} {'stock ms':>9} {'sparse ms':>10} {'stock tok/s':>12} {'sparse tok/s':>13} {'ratio':>6}")
    for r in results:
        for part, label in (("", "whole LM step"), ("_recurrent", "2xLSTM fwd+bwd")):
            stock, sparse = r[f"stock{part}"], r[f"sparse{part}"]
            print(f"{r['width']:>6} {label:>16} {stock['ms_per_step']:>9.1f} {sparse['ms_per_step']:>10.1f} "
                  f"{stock['tokens_per_s']:>12.0f} {sparse['tokens_per_s']:>13.0f} {r[f'ratio{part}']:>6.3f}")
    print(f"\n{'width':>6} {'sparse SNT-ASGD ms':>19} {'sparse SNT-ASGD (averaging on) ms':>34} {'ratio':>6}")
    for r in results:
        print(f"{r['width']:>6} {r['sparse']['ms_per_step']:>19.1f} {r['sparse_sntasgd']['ms_per_step']:>34.1f} {r['ratio_sntasgd']:>6.3f}")
    print(f"\n{'width':>6} {'sparse, Keras loss ms':>22} {'sparse, ks.losses ms':>21} {'ratio':>6}")
    for r in results:
        print(f"{r['width']:>6} {r['sparse_keras_loss']['ms_per_step']:>22.1f} {r['sparse']['ms_per_step']:>21.1f} {r['ratio_ks_loss']:>6.3f}")
    print(f"reference: authors' PyTorch code, sparse 2x200 on this CPU: "
          f"{REFERENCE_PYTORCH['ms_per_step']} ms/step, ~{REFERENCE_PYTORCH['tokens_per_s']} tokens/s")
    out = pathlib.Path(FLAGS.output)
    record = {
        "command": command,
        "machine": machine.record(),
        "config": {"batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len, "vocab": FLAGS.vocab, "jit_compile": FLAGS.jit_compile,
                   "density": FLAGS.density, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
                   "optimizer": "stock: keras SGD(lr=1, global_clipnorm=0.25); sparse: ks SNTASGD(lr=1, global_clipnorm=0.25), "
                                "averaging off (sparse_sntasgd: on)"},
        "reference_pytorch": REFERENCE_PYTORCH,
        "results": results,
    }
    for kept in ("trainer", "recurrent", "profile"):
        if kept in previous_record(out):
            record[kept] = previous_record(out)[kept]
    write_record(record, command)


if __name__ == "__main__":
    app.run(main)

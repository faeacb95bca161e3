r"""Time of one drop-and-grow topology update of 2-layer LSTM language models.

PTB-shaped LM: MaskedEmbedding(10000, W) -> 2 x SparseLSTM(W) -> MaskedDense(10000),
every matrix at density 0.33 (unstructured, and with 1 x 16 blocks along the inputs
of every kernel and the features of the embedding: `--block_sizes`), SGD with momentum (so the update also resets optimizer
slots). One update = read masks and weights, magnitude drop + random growth
(cross-gate) on every matrix, write masks, weights and momentum, and compute the
logged statistics: exactly what `ks.callbacks.SelfishRNN` does at an epoch end.
Before every update the active weights get fresh random values (untimed), as
training between two updates would give them. The first update of a callback also
allocates its per-matrix workspaces (and loads the compiled kernels); it is reported
on its own, and the table's "s / update" is the median of `--repeats` updates after
`--warmup` more ("slowest s" their maximum).

    python -m bench.mask_update                       # widths 200, 650, 1500
    python -m bench.mask_update --widths=1500 --repeats=9
    python -m bench.mask_update --widths=1500 --block_sizes=1,4,16

Drop rates: 0.8 (the first update of the paper's 2 x 1500 recipe, p_0 = 0.8) and
0.5. Prints a table and writes bench/results/mask_update.json. `--writes=tf` times
the fallback that distributed and GPU variables take (whole-tensor TF ops for the
mask, weight and slot writes instead of in-place writes), on this machine's CPU:

    python -m bench.mask_update --widths=1500 --drop_rates=0.8 --writes=tf --output=bench/results/mask_update_tf_writes.json
"""

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

import keras_selfish as ks  # noqa: E402
from bench import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["200", "650", "1500"], "LSTM widths (embedding size = width).")
flags.DEFINE_list("drop_rates", ["0.8", "0.5"], "Drop rates to time.")
flags.DEFINE_list("block_sizes", ["1", "16"], "Mask block sizes (ks.sparsity.initialize block_size; 1: unstructured).")
flags.DEFINE_integer("repeats", 5, "Timed updates per configuration; the median is reported.")
flags.DEFINE_integer("warmup", 1, "Untimed updates after the first one (which is reported on its own).")
flags.DEFINE_integer("vocab", 10000, "Vocabulary size.")
flags.DEFINE_float("density", 0.33, "Density of every sparse matrix.")
flags.DEFINE_enum("writes", "in_place", ["in_place", "tf"], "in_place: plain CPU variables are rewritten in their own memory; "
                  "tf: force the whole-tensor TensorFlow ops that distributed and GPU variables take.")
flags.DEFINE_string("output", str(pathlib.Path(__file__).parent / "results" / "mask_update.json"), "Result file.")


def build_lm(width, block_size):
    model = keras.Sequential(
        [
            keras.Input((35,), dtype="int32"),
            ks.layers.MaskedEmbedding(FLAGS.vocab, width),
            ks.layers.SparseLSTM(width, return_sequences=True),
            ks.layers.SparseLSTM(width, return_sequences=True),
            ks.layers.MaskedDense(FLAGS.vocab),
        ]
    )
    ks.sparsity.initialize(model, FLAGS.density, seed=0, block_size=block_size)
    model.compile(keras.optimizers.SGD(1.0, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model


def simulate_training(model, seed):
    """Fresh random values for every active weight (untimed).

    Between two updates training moves the grown weights away from exactly 0 and
    reorders magnitudes; without this, back-to-back updates would see most active
    weights at exactly 0, a case real training does not produce.
    """
    rng = np.random.default_rng(seed)
    for mw in ks.sparsity.collect(model):
        mask = mw.mask.numpy()
        mw.variable.assign(rng.standard_normal(mask.shape, dtype=np.float32) * 0.05 * mask)


def time_updates(model, rate):
    """`(first, timed, record)`: seconds of the first update, of the timed ones after the warm-up."""
    callback = ks.callbacks.DropAndGrow(drop_fraction=rate, schedule="constant", update_every=1, seed=0, verbose=0)
    callback.set_model(model)
    callback.params = {"epochs": 1, "steps": 1000}
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    times = []
    for step in range(1, FLAGS.warmup + FLAGS.repeats + 2):
        simulate_training(model, step)
        start = time.perf_counter()
        record = callback.update(step)
        times.append(time.perf_counter() - start)
    return times[0], times[1 + FLAGS.warmup :], record


def main(argv):
    del argv
    if FLAGS.writes == "tf":  # what ks.sparsity.rewire does for variables it cannot write in place
        ks.sparsity.in_place.buffer_of = lambda variable: None
    rows = []
    for width in map(int, FLAGS.widths):
        for block_size in map(int, FLAGS.block_sizes):
            model = build_lm(width, block_size)
            params = sum(mw.size for mw in ks.sparsity.collect(model))
            for rate in map(float, FLAGS.drop_rates):
                first, timed, record = time_updates(model, rate)
                moved = sum(w["dropped"] for w in record["weights"].values())
                rows.append({"width": width, "block_size": block_size, "masked_params": params, "active": record["active"],
                             "drop_rate": rate, "moved": moved, "seconds": float(np.median(timed)),
                             "slowest_seconds": max(timed), "first_update_seconds": first})
            del model
            keras.backend.clear_session()
    header = f"{'width':>6} {'block':>5} {'masked params':>14} {'active':>12} {'drop rate':>9} {'dropped+grown':>14} {'s / update':>11} {'slowest s':>10} {'first update s':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['width']:>6} {r['block_size']:>5} {r['masked_params']:>14,} {r['active']:>12,} {r['drop_rate']:>9} {2 * r['moved']:>14,} {r['seconds']:>11.3f} {r['slowest_seconds']:>10.3f} {r['first_update_seconds']:>15.3f}")
    command = "python -m bench.mask_update " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\nCommand: {command.strip()}")
    result = {
        "command": command.strip(),
        "machine": machine.record(),
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "writes": FLAGS.writes,
        "rows": rows,
    }
    pathlib.Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(FLAGS.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)

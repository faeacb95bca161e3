"""One process of a tiny `ks.runs.train` run under a strategy (run as a subprocess).

    python -m tests.training.distributed_lm --distribution=mirrored --replicas=2 --model_dir=... --data_dir=... --out=x.npz

Trains a 2 x 8 Selfish LSTM with drop-and-grow every 2 steps and SNT-ASGD (no
dropout, so any number of replicas computes the same run) on the `ptb` corpus in
`--data_dir` (the test writes a made-up one). After every batch it checks that the local replicas of every masked
weight, mask and optimizer slot are identical, that inactive weights are 0 and that
each matrix keeps its active count, and records a digest of them all (compared
across workers by the test). `--kill_at=N` SIGKILLs the process at the end of
global batch N (a killed worker; the test re-runs it to resume). `--out` gets the
batch losses, the digests and the final masks, weights and slots. It must own the
process: logical devices and collective ops are configured before TensorFlow runs.
"""

import argparse
import hashlib
import os
import signal

import numpy as np
import tensorflow as tf

ARGS = argparse.ArgumentParser()
ARGS.add_argument("--distribution", default="none")
ARGS.add_argument("--replicas", type=int, default=1, help="logical CPUs (mirrored)")
ARGS.add_argument("--model_dir", required=True)
ARGS.add_argument("--data_dir", required=True)
ARGS.add_argument("--out", required=True)
ARGS.add_argument("--kill_at", type=int, default=0)
ARGS.add_argument("--jit_compile", default="false")
FLAGS = ARGS.parse_args()
if FLAGS.replicas > 1:
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * FLAGS.replicas)

import keras  # noqa: E402

import keras_selfish as ks  # noqa: E402
from keras_selfish.sparsity.rewire import optimizer_slots  # noqa: E402

STRATEGY = ks.distribution.strategy(FLAGS.distribution)
if FLAGS.distribution == "mirrored":
    STRATEGY = tf.distribute.MirroredStrategy([f"CPU:{i}" for i in range(FLAGS.replicas)])
SETTINGS = {
    "emsize": 8, "nhid": 8, "dropout": 0.0, "batch_size": 4, "bptt": 5, "epochs": 2, "steps_per_epoch": 5,
    "update_frequency": 2, "density": 0.5, "nonmono": 1, "lr": 20.0, "seed": 7,
}


def local(variable):
    """The local replicas' values of a (keras) variable."""
    backing = variable.value
    values = backing.values if isinstance(backing, tf.distribute.DistributedValues) else [backing]
    return [np.asarray(v) for v in values]


class CheckReplicas(keras.callbacks.Callback):
    """After every batch: replicas agree, inactive weights are 0, counts hold; records digests and losses."""

    def __init__(self):
        super().__init__()
        self.losses, self.digests, self.masks, self.counts, self.batch = [], [], [], None, 0

    def state(self):
        values = []
        for mw in ks.sparsity.collect(self.model):
            for variable in [mw.variable, mw.mask, *optimizer_slots(self.model.optimizer, mw.variable)]:
                replicas = local(variable)
                assert all(np.array_equal(replicas[0], r) for r in replicas[1:]), f"replicas of {variable.path} differ"
                values.append(replicas[0])
        return values

    def on_train_batch_end(self, batch, logs=None):
        weights = ks.sparsity.collect(self.model)
        counts = [int(local(mw.mask)[0].sum()) for mw in weights]
        self.counts = self.counts or counts
        assert counts == self.counts, f"active counts changed: {counts} != {self.counts}"
        for mw in weights:
            assert not np.any(local(mw.variable)[0][local(mw.mask)[0] == 0]), f"inactive weights of {mw.name} are nonzero"
        self.digests.append(hashlib.sha256(b"".join(v.tobytes() for v in self.state())).hexdigest())
        self.losses.append(float(logs["loss"]))
        self.masks.append(np.concatenate([local(mw.mask)[0].reshape(-1) for mw in weights]))
        self.batch += 1
        step = ks.model_state.optimizer_step(self.model)
        if FLAGS.kill_at and step == FLAGS.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    config = ks.runs.settings("tiny_ptb", SETTINGS)
    check = CheckReplicas()
    ks.runs.train(config, FLAGS.model_dir, data_dir=FLAGS.data_dir, checkpoint_every=3, log_every=0, jit_compile=FLAGS.jit_compile, distribution=STRATEGY, loggers=[check])
    model = check.model
    final = {f"{i}": v for i, v in enumerate(check.state())}
    np.savez(FLAGS.out, losses=np.array(check.losses), digests=np.array(check.digests), masks=np.array(check.masks), counts=np.array(check.counts), **final)
    print(f"{check.batch} batches checked, replicas agree; {len(final)} arrays; {model.optimizer.averaging=}")


if __name__ == "__main__":
    main()

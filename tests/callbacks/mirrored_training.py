"""SelfishRNN training under MirroredStrategy on two logical CPUs (run as a subprocess).

`python -m tests.callbacks.mirrored_training` exits non-zero if, after any batch,
a masked weight's SGD momentum is not found, the replicas of a weight, mask or
momentum differ, an inactive weight is nonzero, or a matrix's active count
changed. It must own the process: logical devices can only be configured before
TensorFlow starts its runtime.
"""

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402

import keras_selfish as ks  # noqa: E402
from keras_selfish.sparsity.rewire import optimizer_slots  # noqa: E402
from tests.callbacks import lm  # noqa: E402


class CheckReplicas(keras.callbacks.Callback):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.checks = 0

    def on_train_batch_end(self, batch, logs=None):
        for mw in ks.sparsity.collect(self.model):
            slots = optimizer_slots(self.model.optimizer, mw.variable)
            assert [slot.name.rsplit("_", 1)[-1] for slot in slots] == ["momentum"], f"momentum of {mw.name} not found: {slots}"
            variables = [mw.variable, mw.mask, *slots]
            replicas = [[r.numpy() for r in v.value.values] for v in variables]
            for values in replicas:
                assert len(values) == 2 and np.array_equal(values[0], values[1]), f"replicas of {mw.name} differ"
            weight, mask = replicas[0][0], replicas[1][0]
            assert np.all(weight[mask == 0] == 0), f"inactive weights of {mw.name} are nonzero"
            assert int(mask.sum()) == self.counts[mw.name], f"active count of {mw.name} changed"
        self.checks += 1


def main():
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    with strategy.scope():
        model = lm.compile_lm(lm.tiny_lm(layers=1))
    counts = {mw.name: int(mw.mask.numpy().sum()) for mw in ks.sparsity.collect(model)}
    selfish = ks.callbacks.SelfishRNN(0.5, update_every=2, seed=0, verbose=0)
    check = CheckReplicas(counts)
    x, y = lm.tokens(batches=6)
    model.fit(x, y, batch_size=lm.BATCH, epochs=2, callbacks=[selfish, check], verbose=0)
    changed = selfish.history[-1]["topology_change"]
    assert len(selfish.history) == 6 and changed > 0, (len(selfish.history), changed)
    print(f"{len(selfish.history)} updates, {check.checks} checks, topology change {changed:.3f}: replicas agree")


if __name__ == "__main__":
    main()

"""DropAndGrow(seed=None) under MirroredStrategy on two logical CPUs (run as a subprocess).

`python -m tests.callbacks.seeded_mirrored` exits non-zero unless the chief-seed
all-reduce runs at train begin with replica 0 contributing the seed and replica 1
zeros, yields the callback's seed, and a new callback restored by `set_state` keeps
it through a second fit. It must own the process: logical devices can only be
configured before TensorFlow starts its runtime.
"""

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras_selfish as ks  # noqa: E402
from keras_selfish.callbacks import drop_and_grow  # noqa: E402
from tests.callbacks import lm  # noqa: E402


def main():
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    with strategy.scope():
        model = lm.compile_lm(lm.tiny_lm(layers=1))
    reduced = []
    reduce = strategy.reduce

    def recording_reduce(op, value, axis):  # records the seed all-reduce (Keras reduces its logs too)
        result = reduce(op, value, axis)
        if isinstance(value, tf.distribute.DistributedValues) and value.values[0].shape == (3,):
            reduced.append(([np.asarray(v) for v in value.values], np.asarray(result)))
        return result

    strategy.reduce = recording_reduce
    x, y = lm.tokens(batches=4)
    first = ks.callbacks.DropAndGrow(update_every=2, verbose=0)
    drawn = first.seed
    model.fit(x, y, batch_size=lm.BATCH, epochs=1, callbacks=[first], verbose=0)
    assert len(reduced) == 1, reduced
    (chief, other), total = reduced[0]
    assert chief.any() and not other.any() and np.array_equal(total, chief), reduced
    assert first.seed == drawn and 0 <= drawn < 2**63, (first.seed, drawn)

    second = ks.callbacks.DropAndGrow(update_every=2, verbose=0)
    assert second.seed != drawn
    second.set_state(first.get_state())
    model.fit(x, y, batch_size=lm.BATCH, epochs=2, initial_epoch=1, callbacks=[second], verbose=0)
    assert len(reduced) == 2 and second.seed == drawn and len(second.history) == 4, (second.seed, drawn, len(second.history))
    print(f"seed {drawn} broadcast from replica 0 and restored by set_state")


if __name__ == "__main__":
    main()

"""A tiny sparse language model and data for callback tests."""

import keras
import numpy as np

import keras_selfish as ks

VOCAB, SEQ, BATCH, WIDTH = 40, 6, 4, 8


def tiny_lm(density=0.3, seed=0, cell="lstm", bidirectional=False, layers=2):
    rnn = {"lstm": ks.layers.SparseLSTM, "gru": ks.layers.SparseGRU}[cell]
    model = keras.Sequential([keras.Input((SEQ,), batch_size=BATCH, dtype="int32"), ks.layers.MaskedEmbedding(VOCAB, WIDTH)])
    for _ in range(layers):
        layer = rnn(WIDTH, return_sequences=True)
        model.add(keras.layers.Bidirectional(layer) if bidirectional else layer)
    model.add(ks.layers.MaskedDense(VOCAB))
    ks.sparsity.initialize(model, density, seed=seed)
    return model


def tokens(batches=10, seed=0):
    """Next-token data from a simple repeating pattern plus noise, so training has signal."""
    rng = np.random.default_rng(seed)
    n = batches * BATCH
    start = rng.integers(0, VOCAB, (n, 1))
    x = (start + np.arange(SEQ)[None]) % VOCAB
    x = np.where(rng.random(x.shape) < 0.1, rng.integers(0, VOCAB, x.shape), x)
    return x.astype("int32"), ((x + 1) % VOCAB).astype("int32")


def compile_lm(model, optimizer=None, **kwargs):
    model.compile(
        optimizer or keras.optimizers.SGD(0.5, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


class MaskInvariant(keras.callbacks.Callback):
    """Records, after every batch, the largest |w| at an inactive position."""

    def __init__(self):
        super().__init__()
        self.worst = []

    def on_train_batch_end(self, batch, logs=None):
        self.worst.append(max(float(np.abs(mw.variable.numpy()[mw.mask.numpy() == 0]).max(initial=0)) for mw in ks.sparsity.collect(self.model)))

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


TIED_VOCAB, TIED_WIDTH, TIED_BLOCK = 50, 20, 16  # 20 features: a block of 16 and a partial one of 4


def tied_block_lm(density=0.3, seed=0):
    """A tied LSTM language model (one table: embedding and softmax), masks of whole 1 x 16 blocks."""
    model = ks.models.language_model("lstm", TIED_VOCAB, emsize=TIED_WIDTH, nhid=TIED_WIDTH, nlayers=1, tied=True, batch_size=BATCH, seq_len=SEQ)
    ks.sparsity.initialize(model, density, seed=seed, block_size=TIED_BLOCK)
    return model


def fit_with_selfish_rnn(model, callbacks=()):
    """Six steps of plain `fit` with three Selfish-RNN updates (DropAndGrow: magnitude drop,
    random growth, the compiled rule); returns the DropAndGrow callback."""
    x, y = tokens(batches=6)
    callback = ks.callbacks.DropAndGrow(drop_fraction=0.5, schedule="constant", update_every=2, seed=0, verbose=0)
    compile_lm(model).fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback, *callbacks], verbose=0)
    return callback

"""A mask-free inference graph of a language model: the common core of the exporters.

`InferenceModel.from_keras(model)` reads a trained model's weights with the masks
folded in (`W * M`, so the artifact holds no mask variables and no mask multiplies)
and rebuilds the computation in plain TensorFlow ops that TFLite maps to builtins:
GATHER for the embedding, FULLY_CONNECTED for every input, recurrent and softmax
matrix (all gates of a cell in one matrix, so the converter can sparse-encode it;
the fused LSTM op never is), and elementwise ops for the gate math.

Supported: `ks.models.LanguageModel` (all architectures), and Sequential/functional
stacks of `MaskedEmbedding`/`Embedding`, `SparseLSTM`/`LSTM`, `SparseGRU`/`GRU`, `RHN`,
`ONLSTM`, dropout layers (inference: identity) and `MaskedDense`/`Dense`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_selfish.layers.dense import MaskedDense
from keras_selfish.layers.embedding import MaskedEmbedding
from keras_selfish.layers.onlstm import ONLSTMCell
from keras_selfish.layers.rhn import RHNCell
from keras_selfish.sparsity.masked_weight import mask_of

SKIPPED = (keras.layers.InputLayer, keras.layers.Dropout)


def folded(variable):
    """float32 numpy value of `variable` times its mask (if it has one)."""
    value = keras.ops.convert_to_numpy(variable).astype(np.float32)
    mask = mask_of(variable)
    return value if mask is None else value * keras.ops.convert_to_numpy(mask)


def _check_activations(layer):
    cell = layer.cell
    for name, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if keras.activations.serialize(getattr(cell, name)) != expected:
            raise ValueError(f"ks.export supports {name}={expected!r} only; layer {layer.name!r} uses another.")


class Projection(tf.Module):
    """`x @ W` with `W` stored in row blocks of at most `max_rows` input features.

    TFLite sparse-encodes a FULLY_CONNECTED weight with one index per nonzero whose
    width follows the input dimension: 1 byte up to 255 inputs, 2 bytes above. Split
    into blocks of <= 255 inputs (one FULLY_CONNECTED each, summed), a weight at
    density 0.33 takes about 0.42x its dense bytes instead of 0.5x. The sum is exact
    up to float rounding.
    """

    def __init__(self, weight, max_rows=None, name="projection"):
        super().__init__(name=name)
        rows = weight.shape[0]
        step = max_rows or rows
        self.blocks = [tf.Variable(weight[i : i + step], trainable=False, name=f"{name}_{i // step}") for i in range(0, rows, step)]
        self.step = step
        self.units = weight.shape[1]

    def __call__(self, x):
        if len(self.blocks) == 1:
            return tf.matmul(x, self.blocks[0])
        return tf.add_n([tf.matmul(x[:, i * self.step : (i + 1) * self.step], block) for i, block in enumerate(self.blocks)])


class Recurrent(tf.Module):
    """One recurrent layer as constants-to-be plus its single-step function."""

    def __init__(self, layer, max_rows=None):
        super().__init__(name=layer.name)
        _check_activations(layer)
        cell = layer.cell
        self.units = cell.units
        self.kind = _kind(cell)
        if self.kind == "gru" and not cell.reset_after:
            raise ValueError(f"ks.export supports GRU with reset_after=True only (layer {layer.name!r}).")
        self.kernel = Projection(folded(cell.kernel), max_rows, name="kernel")
        kernels = cell.recurrent_kernels if self.kind == "rhn" else [cell.recurrent_kernel]
        self.recurrent_kernels = [Projection(folded(k), max_rows, name=f"recurrent_kernel_{i}") for i, k in enumerate(kernels)]
        bias = folded(cell.bias) if cell.use_bias else None
        width = self.kernel.units
        if bias is None:
            bias = np.zeros((len(kernels), width) if self.kind == "rhn" else (2, width) if self.kind == "gru" else (width,), np.float32)
        self.bias = tf.Variable(bias, trainable=False, name="bias")
        self.couple = getattr(cell, "couple_carry", True)
        self.chunk_size = getattr(cell, "chunk_size", None)
        self.state_sizes = [self.units, self.units] if self.kind in ("lstm", "onlstm") else [self.units]

    def step(self, x, states):
        """`(output, new_states)` for inputs `x (batch, features)`."""
        if self.kind == "rhn":
            return self._rhn(x, states[0])
        if self.kind == "gru":
            return self._gru(x, states[0])
        z = self.kernel(x) + self.recurrent_kernels[0](states[0]) + self.bias
        if self.kind == "onlstm":
            n = self.units // self.chunk_size
            master_f = self._expand(tf.math.cumsum(tf.nn.softmax(z[:, :n]), axis=-1))
            master_i = self._expand(1.0 - tf.math.cumsum(tf.nn.softmax(z[:, n : 2 * n]), axis=-1))
            z_i, z_f, z_c, z_o = tf.split(z[:, 2 * n :], 4, axis=-1)
            overlap = master_f * master_i
            f = tf.sigmoid(z_f) * overlap + (master_f - overlap)
            i = tf.sigmoid(z_i) * overlap + (master_i - overlap)
        else:
            z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
            f, i = tf.sigmoid(z_f), tf.sigmoid(z_i)
        c = f * states[1] + i * tf.tanh(z_c)
        h = tf.sigmoid(z_o) * tf.tanh(c)
        return h, [h, c]

    def _expand(self, chunks):
        """`(batch, n)` -> `(batch, n * chunk_size)`, each chunk value repeated."""
        batch = tf.shape(chunks)[0]
        return tf.reshape(tf.broadcast_to(chunks[:, :, None], [batch, chunks.shape[1], self.chunk_size]), [batch, self.units])

    def _gru(self, x, h):
        x_z, x_r, x_h = tf.split(self.kernel(x) + self.bias[0], 3, axis=-1)
        r_z, r_r, r_h = tf.split(self.recurrent_kernels[0](h) + self.bias[1], 3, axis=-1)
        z = tf.sigmoid(x_z + r_z)
        r = tf.sigmoid(x_r + r_r)
        candidate = tf.tanh(x_h + r * r_h)
        h = z * h + (1.0 - z) * candidate
        return h, [h]

    def _rhn(self, x, s):
        projected = self.kernel(x)
        for level, kernel in enumerate(self.recurrent_kernels):
            z = kernel(s) + self.bias[level] + (projected if level == 0 else 0.0)
            gates = tf.split(z, 2 if self.couple else 3, axis=-1)
            h, t = tf.tanh(gates[0]), tf.sigmoid(gates[1])
            c = 1.0 - t if self.couple else tf.sigmoid(gates[2])
            s = h * t + s * c
        return s, [s]


class InferenceModel(tf.Module):
    """Embedding -> recurrent layers -> softmax projection, weights folded, no masks.

    `step(token, states)` is one time step for a batch of tokens; `score(ids)` runs
    a whole `(batch, time)` sequence from zero states.
    """

    def __init__(self, embedding, recurrent, decoder_kernel, decoder_bias, vocabulary=None, tied=False, max_rows=None):
        super().__init__(name="language_model")
        self.embedding_size = embedding.shape[1]
        if tied:
            # The TFLite converter merges identical constants; a tied table would then feed
            # both GATHER and the sparse FULLY_CONNECTED, which the sparsifier rejects. A
            # zero column (sliced off after the lookup) keeps the two buffers distinct.
            embedding = np.concatenate([embedding, np.zeros((embedding.shape[0], 1), np.float32)], axis=1)
        self.embedding = tf.Variable(embedding, trainable=False, name="embedding")
        self.recurrent = recurrent
        self.decoder_kernel = Projection(decoder_kernel, max_rows, name="decoder_kernel")
        self.decoder_bias = tf.Variable(decoder_bias, trainable=False, name="decoder_bias")
        self.vocabulary = vocabulary
        self.state_sizes = [size for r in recurrent for size in r.state_sizes]

    @classmethod
    def from_keras(cls, model, max_rows=None):
        """Read a trained Keras language model (see the module docstring for what is supported).

        Args:
            model: the Keras model.
            max_rows: store every matrix in row blocks of at most this many inputs
                (see `Projection`); None keeps whole matrices.
        """
        layers = _stack(model)
        embedding_layer, recurrent_layers, decoder = layers
        embedding = folded(embedding_layer.embeddings)
        if decoder is None:  # tied: the softmax is the embedding table itself
            decoder_kernel = embedding.T.copy()
            bias = embedding_layer.bias
            decoder_bias = folded(bias) if bias is not None else np.zeros(embedding.shape[0], np.float32)
        else:
            decoder_kernel = folded(decoder.kernel)
            decoder_bias = folded(decoder.bias) if decoder.bias is not None else np.zeros(decoder_kernel.shape[1], np.float32)
            if decoder.activation not in (None, keras.activations.linear):
                raise ValueError(f"ks.export needs a linear output layer (logits); {decoder.name!r} has an activation.")
        recurrent = [Recurrent(layer, max_rows) for layer in recurrent_layers]
        return cls(embedding, recurrent, decoder_kernel, decoder_bias, getattr(model, "vocabulary", None), tied=decoder is None, max_rows=max_rows)

    def zero_states(self, batch):
        return [tf.zeros([batch, size]) for size in self.state_sizes]

    def step(self, token, states):
        """`(logits (batch, vocab), new_states)` for `token (batch,)` int32."""
        x = tf.gather(self.embedding, token)[:, : self.embedding_size]
        new_states, offset = [], 0
        for layer in self.recurrent:
            count = len(layer.state_sizes)
            x, layer_states = layer.step(x, states[offset : offset + count])
            new_states += layer_states
            offset += count
        return self.decoder_kernel(x) + self.decoder_bias, new_states

    def score(self, ids):
        """Logits `(batch, time, vocab)` of a sequence `ids (batch, time)` from zero states."""
        ids = tf.convert_to_tensor(ids, tf.int32)

        def body(states, token):
            logits, new_states = self.step(token, list(states[1:]))
            return (logits, *new_states)

        batch = tf.shape(ids)[0]
        initial = (tf.zeros([batch, self.decoder_kernel.units]), *self.zero_states(batch))
        outputs = tf.scan(body, tf.transpose(ids), initializer=initial)
        return tf.transpose(outputs[0], [1, 0, 2])


CELL_KINDS = ((RHNCell, "rhn"), (ONLSTMCell, "onlstm"), (keras.layers.GRUCell, "gru"), (keras.layers.LSTMCell, "lstm"))


def _kind(cell):
    for cls, kind in CELL_KINDS:
        if isinstance(cell, cls):
            return kind
    return None


def _stack(model):
    """`(embedding_layer, [recurrent layers], decoder_layer_or_None_if_tied)`."""
    if hasattr(model, "recurrent") and hasattr(model, "embedding"):  # ks.models.LanguageModel
        return model.embedding, list(model.recurrent), model.decoder
    layers = [layer for layer in model.layers if not isinstance(layer, SKIPPED)]
    if not layers or not isinstance(layers[0], (MaskedEmbedding, keras.layers.Embedding)):
        raise ValueError("ks.export needs a language model that starts with an embedding layer (MaskedEmbedding or Embedding).")
    if not isinstance(layers[-1], (keras.layers.Dense, MaskedDense)):
        raise ValueError(f"ks.export needs a Dense/MaskedDense softmax projection last; got layer {layers[-1].name!r} ({type(layers[-1]).__name__}).")
    for layer in layers[1:-1]:
        if not isinstance(layer, keras.layers.RNN) or _kind(layer.cell) is None or layer.go_backwards or not layer.return_sequences:
            raise ValueError(
                f"ks.export cannot express layer {layer.name!r} ({type(layer).__name__}); supported between the "
                f"embedding and the softmax: forward SparseLSTM/LSTM, SparseGRU/GRU, RHN, ONLSTM with return_sequences, and dropout."
            )
    return layers[0], layers[1:-1], layers[-1]

"""A mask-free inference graph of a language model: the common core of the exporters.

`InferenceModel.from_keras(model)` reads a trained model's weights with the masks
folded in (`W * M`, so the artifact holds no mask variables and no mask multiplies)
and rebuilds the computation in plain TensorFlow ops that TFLite maps to builtins:
GATHER for the embedding (a dense table, or row-compressed: `EmbeddingTable`),
FULLY_CONNECTED for every input, recurrent and softmax matrix (all gates of a cell in one matrix, so the converter can sparse-encode it;
the fused LSTM op never is; a layer's input and recurrent matrices stacked into one), and elementwise ops for the gate math.

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
TFLITE_BLOCKS = (16, 4)  # 1 x b block sizes TFLite's sparse FULLY_CONNECTED kernels run (int8 weights: 16, float: 4)


def folded(variable):
    """float32 numpy value of `variable` times its mask (if it has one)."""
    value = keras.ops.convert_to_numpy(variable).astype(np.float32)
    mask = mask_of(variable)
    return value if mask is None else value * keras.ops.convert_to_numpy(mask)


def input_block(variable, axis=0):
    """Largest `b` of `TFLITE_BLOCKS` such that `variable`'s mask is made of whole 1 x b blocks.

    Blocks run along `axis` (a kernel's input dimension, 0; an embedding's feature
    dimension, 1) from index 0; a last partial block counts when it is all active or
    all inactive. 1 when the mask has no such structure; None without a mask.
    """
    mask = mask_of(variable)
    if mask is None:
        return None
    mask = np.moveaxis(keras.ops.convert_to_numpy(mask) != 0, axis, 0)
    for b in TFLITE_BLOCKS:
        starts = np.arange(0, mask.shape[0], b)
        if np.array_equal(np.logical_or.reduceat(mask, starts, axis=0), np.logical_and.reduceat(mask, starts, axis=0)):
            return b
    return 1


def _check_activations(layer):
    cell = layer.cell
    for name, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if keras.activations.serialize(getattr(cell, name)) != expected:
            raise ValueError(f"ks.export supports {name}={expected!r} only; layer {layer.name!r} uses another.")


class Projection(tf.Module):
    """`x_1 @ W_1 + x_2 @ W_2 + ...` as FULLY_CONNECTED ops over the concatenated inputs.

    The weights are stacked along their inputs, so a layer's input and recurrent
    matrices run as one FULLY_CONNECTED per step (one op and one input quantisation
    instead of two and an add: less time per token, dense and sparse alike). The
    stacked `W` is stored in row blocks of at most `max_rows` input features:
    TFLite sparse-encodes an unstructured FULLY_CONNECTED weight with one index per
    nonzero whose width follows the input dimension: 1 byte up to 255 inputs, 2 bytes
    above. Split into blocks of <= 255 inputs (one FULLY_CONNECTED each, summed), a
    weight at density 0.33 takes about 0.42x its dense bytes instead of 0.5x. The sum
    is exact up to float rounding. A block-sparse weight (one index per 1 x b block)
    gains nothing from the split and is kept whole: `max_rows=None`; each part's
    inputs are zero-padded to a multiple of `pad_to` (so blocks never straddle two
    parts, and TFLite's block-sparse kernels compute a partial last block wrongly).

    Args:
        weights: one `(features, units)` matrix or a list of them (same `units`).
    """

    def __init__(self, weights, max_rows=None, pad_to=1, name="projection"):
        super().__init__(name=name)
        weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
        self.paddings = [-w.shape[0] % pad_to for w in weights]
        weight = np.concatenate([np.pad(w, [[0, p], [0, 0]]) for w, p in zip(weights, self.paddings)])
        rows = weight.shape[0]
        step = max_rows or rows
        self.blocks = [tf.Variable(weight[i : i + step], trainable=False, name=f"{name}_{i // step}") for i in range(0, rows, step)]
        self.step = step
        self.units = weight.shape[1]

    def __call__(self, *inputs):
        """`(batch, units)` for one `(batch, features_i)` input per weight."""
        parts = [tf.pad(x, [[0, 0], [0, p]]) if p else x for x, p in zip(inputs, self.paddings)]
        x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        if len(self.blocks) == 1:
            return tf.matmul(x, self.blocks[0])
        return tf.add_n([tf.matmul(x[:, i * self.step : (i + 1) * self.step], block) for i, block in enumerate(self.blocks)])


class Recurrent(tf.Module):
    """One recurrent layer as constants-to-be plus its single-step function.

    `layout(variable)` gives each matrix's `Projection` arguments (`max_rows`, `pad_to`).
    The input kernel and the first recurrent kernel (LSTM, ON-LSTM, RHN's first
    level) share one `Projection` when their layouts agree (`self.joint`).
    """

    def __init__(self, layer, layout=lambda variable: {}):
        super().__init__(name=layer.name)
        _check_activations(layer)
        cell = layer.cell
        self.units = cell.units
        self.kind = _kind(cell)
        if self.kind == "gru" and not cell.reset_after:
            raise ValueError(f"ks.export supports GRU with reset_after=True only (layer {layer.name!r}).")
        kernels = cell.recurrent_kernels if self.kind == "rhn" else [cell.recurrent_kernel]
        self.joint = None
        if self.kind != "gru" and layout(cell.kernel) == layout(kernels[0]):  # GRU adds separate biases to the two
            self.joint = Projection([folded(cell.kernel), folded(kernels[0])], name="kernel", **layout(cell.kernel))
            kernels = kernels[1:]
        else:
            self.kernel = Projection(folded(cell.kernel), name="kernel", **layout(cell.kernel))
        self.recurrent_kernels = [Projection(folded(k), name=f"recurrent_kernel_{i}", **layout(k)) for i, k in enumerate(kernels)]
        bias = folded(cell.bias) if cell.use_bias else None
        width = cell.kernel.shape[-1]
        if bias is None:
            bias = np.zeros((len(cell.recurrent_kernels), width) if self.kind == "rhn" else (2, width) if self.kind == "gru" else (width,), np.float32)
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
        z = self._first(x, states[0], self.bias)
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

    def _first(self, x, s, bias):
        """`x @ W + s @ U_0 + bias`: the input and first recurrent projection (bias next to one matmul, which TFLite fuses)."""
        if self.joint is not None:
            return self.joint(x, s) + bias
        return self.kernel(x) + bias + self.recurrent_kernels[0](s)

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
        deeper = self.recurrent_kernels if self.joint is not None else self.recurrent_kernels[1:]
        for level in range(len(deeper) + 1):
            z = self._first(x, s, self.bias[0]) if level == 0 else deeper[level - 1](s) + self.bias[level]
            gates = tf.split(z, 2 if self.couple else 3, axis=-1)
            h, t = tf.tanh(gates[0]), tf.sigmoid(gates[1])
            c = 1.0 - t if self.couple else tf.sigmoid(gates[2])
            s = h * t + s * c
        return s, [s]


SPARSE_BLOCK_ROWS = 255  # inputs per FULLY_CONNECTED block of an unstructured weight: keeps TFLite's sparse indices 1 byte wide


def _itemsize(count, quantize):
    """Stored bytes per value of a float constant of `count` values (TFLite quantises weights of >= 1024 values)."""
    return 1 if quantize is not None and count >= 1024 else 4


def _blocks(table, block):
    """`(blocks (vocab, num_blocks, block), active (vocab, num_blocks))` of `table`, its last block zero-padded."""
    vocab, features = table.shape
    num_blocks = -(-features // block)
    padded = np.zeros((vocab, num_blocks * block), np.float32)
    padded[:, :features] = table
    blocks = padded.reshape(vocab, num_blocks, block)
    return blocks, np.any(blocks != 0, axis=-1)


def _owns_columns(active):
    """`(vocab,)` bool: rows whose active blocks differ from the row before's (they store their column list)."""
    owns = np.ones(active.shape[0], np.bool_)
    owns[1:] = np.any(active[1:] != active[:-1], axis=1)
    return owns


def _shares_columns(active):
    """Whether sharing column lists between like rows saves more index bytes than `column_start` costs."""
    index = np.dtype(_index_dtype(active.shape[1])).itemsize
    return (active.sum() - active[_owns_columns(active)].sum()) * index > 4 * len(active)


def _index_dtype(limit):
    """Smallest integer type TFLite's GATHER reads that holds values up to `limit`."""
    return np.uint8 if limit < 2**8 else np.int16 if limit < 2**15 else np.int32


class EmbeddingTable(tf.Module):
    """The embedding lookup, dense (one GATHER) or row-compressed.

    TFLite has no sparse encoding for a GATHER table. The row-compressed form stores
    only the active 1 x `block` blocks of each row, row after row, after one zero
    block: `values (1 + n, block)` from `row_start (vocab + 1,)`, and their block
    columns (uint8/int16). When that saves more bytes than it costs, a row with the
    same active blocks as the row before shares its column list, found from
    `column_start (vocab,)` (so a mask made of blocks along the vocabulary stores
    one list per block of rows). A token's row is
    rebuilt with builtin ops and static shapes: GATHER the window of `max_blocks`
    (the largest row's block count) values and columns, SCATTER_ND the values'
    positions into an int32 row of `num_blocks` (absent blocks keep 0, the zero
    block; entries past the row's end go to a spare block, sliced off) and GATHER
    the values at them. The values are only ever gathered, so dynamic-range and
    int8 quantisation store them as int8 with zero exactly representable, like the
    dense table.

    Args:
        table: the folded `(vocab, features)` table.
        block: the width of its mask's blocks along the features (1: unstructured).
        compressed: store row-compressed (else dense).
        pad_column: append a zero column to the dense table (a tied table must not
            be merged with the softmax weight; see `InferenceModel`).
    """

    def __init__(self, table, block=1, compressed=False, pad_column=False, name="embedding"):
        super().__init__(name=name)
        self.features = table.shape[1]
        self.compressed = compressed
        if not compressed:
            if pad_column:
                table = np.concatenate([table, np.zeros((table.shape[0], 1), np.float32)], axis=1)
            self.table = tf.Variable(table, trainable=False, name=name)
            return
        self.block = block
        blocks, active = _blocks(table, block)
        self.num_blocks = active.shape[1]
        rows, columns = np.nonzero(active)
        counts = active.sum(axis=1)
        self.max_blocks = max(int(counts.max()), 1)
        values = np.concatenate([np.zeros((1, block), np.float32), blocks[rows, columns]])
        self.values = tf.Variable(values, trainable=False, name=f"{name}_values")
        self.row_start = tf.Variable(1 + np.concatenate([[0], np.cumsum(counts)]).astype(np.int32), trainable=False, name=f"{name}_row_start")
        owns = _owns_columns(active) if _shares_columns(active) else np.ones(len(active), np.bool_)
        self.column_start = None
        if not owns.all():
            own_start = 1 + np.concatenate([[0], np.cumsum(np.where(owns, counts, 0))[:-1]])
            last_owner = np.maximum.accumulate(np.where(owns, np.arange(len(owns)), 0))
            self.column_start = tf.Variable(own_start[last_owner].astype(np.int32), trainable=False, name=f"{name}_column_start")
        columns = np.concatenate([[0], columns[owns[rows]]])  # after a placeholder (the zero block's), so never empty
        self.columns = tf.Variable(columns.astype(_index_dtype(self.num_blocks)), trainable=False, name=f"{name}_columns")

    @staticmethod
    def compressed_bytes(table, block, quantize):
        """`(dense, row-compressed)` bytes of `table` stored at `quantize`."""
        _, active = _blocks(table, block)
        count = 1 + int(active.sum())  # with the zero block
        index = np.dtype(_index_dtype(active.shape[1])).itemsize
        columns = (1 + int(active[_owns_columns(active)].sum())) * index + 4 * len(active) if _shares_columns(active) else count * index
        return table.size * _itemsize(table.size, quantize), count * block * _itemsize(count * block, quantize) + columns + 4 * (len(active) + 1)

    def __call__(self, token):
        """`(batch, features)` rows of `token (batch,)`."""
        if not self.compressed:
            return tf.gather(self.table, token)[:, : self.features]
        start = tf.gather(self.row_start, token)
        count = tf.gather(self.row_start, token + 1) - start
        slots = tf.range(self.max_blocks)
        positions = tf.minimum(start[:, None] + slots, self.values.shape[0] - 1)
        if self.column_start is None:
            column_positions = positions
        else:
            column_positions = tf.minimum(tf.gather(self.column_start, token)[:, None] + slots, self.columns.shape[0] - 1)
        columns = tf.cast(tf.gather(self.columns, column_positions), tf.int32)
        columns = tf.where(slots[None] < count[:, None], columns, self.num_blocks)  # past the row's end: the spare block
        batch = tf.shape(token)[0]
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(columns))
        sources = tf.scatter_nd(tf.stack([rows, columns], axis=-1), positions, [batch, self.num_blocks + 1])[:, : self.num_blocks]
        dense = tf.gather(self.values, sources)  # (batch, num_blocks, block)
        return tf.reshape(dense, [batch, self.num_blocks * self.block])[:, : self.features]


class InferenceModel(tf.Module):
    """Embedding -> recurrent layers -> softmax projection, weights folded, no masks.

    `step(token, states)` is one time step for a batch of tokens; `score(ids)` runs
    a whole `(batch, time)` sequence from zero states.
    """

    def __init__(self, embedding, recurrent, decoder_kernel, decoder_bias, vocabulary=None):
        super().__init__(name="language_model")
        self.embedding = embedding
        self.recurrent = recurrent
        self.decoder_kernel = decoder_kernel
        self.decoder_bias = tf.Variable(decoder_bias, trainable=False, name="decoder_bias")
        self.vocabulary = vocabulary
        self.state_sizes = [size for r in recurrent for size in r.state_sizes]

    @classmethod
    def from_keras(cls, model, sparse=False, quantize=None):
        """Read a trained Keras language model (see the module docstring for what is supported).

        Args:
            model: the Keras model.
            sparse: lay the weights out for TFLite's sparse storage: a matrix whose
                mask is made of 1 x 16 blocks along its inputs (1 x 4 when
                `quantize` is None) stays whole, so the converter block-encodes it
                and the kernels run it sparse; another sparse matrix is split into
                `Projection` row blocks of 255 inputs; a masked embedding table is
                stored row-compressed (`EmbeddingTable`) when that is smaller than
                the dense table at `quantize`.
            quantize: the TFLite quantisation the layout is for (None, "dynamic", "int8").
        """
        needed = TFLITE_BLOCKS[-1] if quantize is None else TFLITE_BLOCKS[0]

        def layout(variable, axis=0):
            block = input_block(variable, axis) if sparse else None
            if block is None:
                return {}
            return {"max_rows": SPARSE_BLOCK_ROWS} if block < needed else {"pad_to": needed}

        embedding_layer, recurrent_layers, decoder = _stack(model)
        table = folded(embedding_layer.embeddings)
        tied = decoder is None
        if tied:  # the softmax is the embedding table itself
            decoder_kernel = Projection(table.T.copy(), name="decoder_kernel", **layout(embedding_layer.embeddings, axis=1))
            bias = embedding_layer.bias
            decoder_bias = folded(bias) if bias is not None else np.zeros(table.shape[0], np.float32)
        else:
            decoder_kernel = Projection(folded(decoder.kernel), name="decoder_kernel", **layout(decoder.kernel))
            decoder_bias = folded(decoder.bias) if decoder.bias is not None else np.zeros(decoder_kernel.units, np.float32)
            if decoder.activation not in (None, keras.activations.linear):
                raise ValueError(f"ks.export needs a linear output layer (logits); {decoder.name!r} has an activation.")
        block = input_block(embedding_layer.embeddings, axis=1) if sparse else None
        compressed = False
        if block is not None:
            dense_bytes, compressed_bytes = EmbeddingTable.compressed_bytes(table, block, quantize)
            compressed = compressed_bytes < dense_bytes
        # The TFLite converter merges identical constants; a tied dense table would then feed
        # both GATHER and the sparse FULLY_CONNECTED, which the sparsifier rejects. A zero
        # column (sliced off after the lookup) keeps the two buffers distinct.
        embedding = EmbeddingTable(table, block or 1, compressed, pad_column=tied)
        recurrent = [Recurrent(layer, layout) for layer in recurrent_layers]
        return cls(embedding, recurrent, decoder_kernel, decoder_bias, getattr(model, "vocabulary", None))

    def zero_states(self, batch):
        return [tf.zeros([batch, size]) for size in self.state_sizes]

    def step(self, token, states):
        """`(logits (batch, vocab), new_states)` for `token (batch,)` int32."""
        x = self.embedding(token)
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

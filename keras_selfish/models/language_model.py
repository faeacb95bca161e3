"""Word-level language models of the Selfish-RNN paper, built from the sparse layers."""

import keras

from keras_selfish.layers.dense import MaskedDense
from keras_selfish.layers.embedding import MaskedEmbedding
from keras_selfish.layers.lstm import SparseLSTM
from keras_selfish.layers.onlstm import ONLSTM
from keras_selfish.layers.regularization import LockedDropout
from keras_selfish.layers.rhn import RHN

ARCHS = ("lstm", "rhn", "awd_lstm", "onlstm")


@keras.saving.register_keras_serializable(package="keras_selfish")
class LanguageModel(keras.Model):
    """Embedding -> recurrent stack -> softmax projection, every matrix masked.

    Architectures:

    * `lstm`: the stacked LSTM of Zaremba et al. / the paper (`nlayers` SparseLSTM
      of `nhid` units; ordinary dropout `dropout` on the embedding output, between
      layers and on the last output).
    * `rhn`: one recurrent highway layer of depth `depth` (`couple` carry gate);
      `dropouti` on inputs and `dropout` on outputs are locked (one mask per
      sequence), `dropouth` is the hidden-state dropout, `dropoute` drops words.
    * `awd_lstm`: AWD-LSTM (Merity et al.): `nlayers` SparseLSTM with weight drop
      `wdrop` on the recurrent kernels and locked dropouts `dropouti` / `dropouth` /
      `dropout`, word dropout `dropoute`; the last layer has `emsize` units when tied.
    * `onlstm`: the same with ON-LSTM layers of chunk size `chunk_size`.

    With `tied=True` the softmax reuses the embedding table (one matrix, one mask;
    needs the last layer's size to equal `emsize`) plus a bias.

    The model keeps its `vocabulary` (list of words, from the training split) in
    its config, so a saved `.keras` file can map text to ids by itself, and the
    block sizes of its embedding's, recurrent layers' and decoder's masks (`mask_blocks`,
    `{layer name: {weight name: size}}`, see `ks.sparsity.KeepsBlockSizes`).

    Input: int ids `(batch, time)`. Output: logits `(batch, time, vocab_size)`.
    """

    def __init__(
        self,
        arch="lstm",
        vocab_size=10000,
        emsize=200,
        nhid=200,
        nlayers=2,
        dropout=0.0,
        dropouth=0.0,
        dropouti=0.0,
        dropoute=0.0,
        wdrop=0.0,
        tied=False,
        depth=10,
        couple=True,
        chunk_size=10,
        stateful=False,
        seed=None,
        vocabulary=None,
        mask_blocks=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if arch not in ARCHS:
            raise ValueError(f"Unknown arch {arch!r}; use one of {list(ARCHS)}.")
        for name, value in (("vocab_size", vocab_size), ("emsize", emsize), ("nhid", nhid), ("nlayers", nlayers)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}.")
        if vocabulary is not None and len(vocabulary) != vocab_size:
            raise ValueError(f"vocabulary has {len(vocabulary)} words but vocab_size is {vocab_size}.")
        self.arch, self.vocab_size, self.emsize, self.nhid, self.nlayers = arch, int(vocab_size), int(emsize), int(nhid), int(nlayers)
        self.dropout, self.dropouth, self.dropouti, self.dropoute, self.wdrop = dropout, dropouth, dropouti, dropoute, wdrop
        self.tied, self.depth, self.couple, self.chunk_size, self.stateful, self.seed = tied, depth, couple, chunk_size, stateful, seed
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self.mask_blocks = {str(name): dict(blocks) for name, blocks in (mask_blocks or {}).items()}
        sizes = [nhid] * (1 if arch == "rhn" else nlayers)
        if tied:
            if arch == "lstm" or arch == "rhn":
                if nhid != emsize:
                    raise ValueError(f"tied weights need emsize == nhid for arch {arch!r}, got emsize={emsize}, nhid={nhid}.")
            else:
                sizes[-1] = emsize
        locked = arch != "lstm"
        drop = LockedDropout if locked else keras.layers.Dropout
        self.embedding = MaskedEmbedding(vocab_size, emsize, word_dropout=dropoute if locked else 0.0, output_bias=tied, seed=seed, mask_blocks=self.mask_blocks.get("embedding"), name="embedding")
        self.input_dropout = drop(dropouti if locked else dropout, seed=seed, name="input_dropout")
        self.recurrent = [self._recurrent_layer(i, units) for i, units in enumerate(sizes)]
        self.hidden_dropouts = [drop(dropouth if locked else dropout, seed=seed, name=f"hidden_dropout_{i}") for i in range(len(sizes) - 1)]
        self.output_dropout = drop(dropout, seed=seed, name="output_dropout")
        self.decoder = None if tied else MaskedDense(vocab_size, mask_blocks=self.mask_blocks.get("decoder"), name="decoder")

    def _recurrent_layer(self, index, units):
        name = f"{self.arch}_{index}"
        common = {"return_sequences": True, "stateful": self.stateful, "seed": self.seed, "mask_blocks": self.mask_blocks.get(name), "name": name}
        if self.arch == "rhn":
            return RHN(units, depth=self.depth, couple_carry=self.couple, recurrent_dropout=self.dropouth, **common)
        if self.arch == "onlstm":
            return ONLSTM(units, chunk_size=self.chunk_size, weight_dropout=self.wdrop, **common)
        return SparseLSTM(units, weight_dropout=self.wdrop if self.arch == "awd_lstm" else 0.0, **common)

    def build(self, input_shape):
        """Create all weights for ids of `input_shape` (recorded, so a saved model rebuilds on load)."""
        self.call(keras.ops.zeros(input_shape, "int32"))

    @property
    def batch_size(self):
        """The batch size the stateful layers were built for (None if not stateful or not built)."""
        states = getattr(self.recurrent[0], "states", None) if self.stateful else None
        return None if not states or states[0] is None else int(states[0].shape[0])

    def call(self, inputs, training=False):
        x = self.input_dropout(self.embedding(inputs, training=training), training=training)
        for i, layer in enumerate(self.recurrent):
            x = layer(x, training=training)
            if i < len(self.hidden_dropouts):
                x = self.hidden_dropouts[i](x, training=training)
        x = self.output_dropout(x, training=training)
        return self.embedding(x, reverse=True) if self.decoder is None else self.decoder(x)

    def reset_states(self):
        """Zero the carried states of stateful recurrent layers (start of an epoch or split)."""
        for layer in self.recurrent:
            if layer.stateful:
                layer.reset_state()

    def get_config(self):
        configs = {layer.name: layer.get_config() for layer in [self.embedding, *self.recurrent, *([self.decoder] if self.decoder else [])]}
        blocks = {name: config["mask_blocks"] for name, config in configs.items() if "mask_blocks" in config}  # see KeepsBlockSizes
        return {
            **super().get_config(),
            **({"mask_blocks": blocks} if blocks else {}),
            "arch": self.arch,
            "vocab_size": self.vocab_size,
            "emsize": self.emsize,
            "nhid": self.nhid,
            "nlayers": self.nlayers,
            "dropout": self.dropout,
            "dropouth": self.dropouth,
            "dropouti": self.dropouti,
            "dropoute": self.dropoute,
            "wdrop": self.wdrop,
            "tied": self.tied,
            "depth": self.depth,
            "couple": self.couple,
            "chunk_size": self.chunk_size,
            "stateful": self.stateful,
            "seed": self.seed,
            "vocabulary": self.vocabulary,
        }


def language_model(arch="lstm", vocab_size=10000, batch_size=None, seq_len=None, **kwargs):
    """Build a `LanguageModel` (see its docstring for the arguments).

    With `batch_size` and `seq_len` the model is built on `(batch_size, seq_len)`
    ids, which stateful training needs.
    """
    model = LanguageModel(arch=arch, vocab_size=vocab_size, **kwargs)
    if batch_size is not None and seq_len is not None:
        model(keras.ops.zeros((batch_size, seq_len), "int32"))
    return model

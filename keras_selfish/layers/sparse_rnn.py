"""Base class of the sparse recurrent layers: input projection hoisted out of the loop.

A sparse cell splits its step into two parts:

* `project_inputs(inputs, training)`: `x @ W + b` (with input dropout); works on
  one step `(batch, input_dim)` or a whole sequence `(batch, time, input_dim)`, which
  it returns time-major `(time, batch, gates * units)` as one 2-D matmul.
* `sequence_weights(training)`: the recurrent weights for one sequence (with weight
  drop, i.e. DropConnect, applied once per sequence as in AWD-LSTM).
* `recurrent_step(projected, states, training, weights)`: the gate math, given the
  projected input of one step.

`cell.call` chains them for one step, so the cell works on its own inside
`keras.layers.RNN` (weight drop is then drawn every step). `SparseRNN` instead
projects the whole sequence with one matmul before the time loop and runs only
`recurrent_step` inside it, or, when the cell offers one (`fused_loop`) and there is
no padding mask, a compiled loop over the whole sequence with a hand-written
backward pass: SparseLSTM (`fused_lstm`, XLA), SparseGRU (`fused_gru`) and RHN
(`fused_rhn`) offer one when `fusable(training)`: tanh and sigmoid activations and
no recurrent dropout in the call (input dropout and weight drop are outside the
loop). ONLSTM always steps. Masks cost nothing here: inactive weights are exactly
zero (the masked-weight invariant).
"""

import keras
from keras.src import backend as keras_backend
from keras.src import tree
from keras.src.utils import tracking

from keras_selfish import keras_private
from keras_selfish.layers.arguments import fraction
from keras_selfish.layers.arguments import positive_int
from keras_selfish.layers.dense import affine
from keras_selfish.sparsity.masked_weight import KeepsBlockSizes
from keras_selfish.sparsity.masked_weight import add_mask


# Keyword arguments that belong to the RNN layer itself, not to its cell.
_LAYER_KWARGS = ("name", "trainable", "dtype", "autocast", "input_shape", "input_dim", "batch_size")


class SparseCellMixin(KeepsBlockSizes):
    """Protocol helpers shared by all sparse cells.

    Dropout uses one input mask and one recurrent mask shared by all gates (stock
    Keras cells switch to one mask per gate when `recurrent_dropout > 0`; sharing is
    what lets the input projection run once for the whole sequence). Cells set
    `self._masked` (their `MaskedWeight`s) in `build`, and keep their masks' block
    sizes in their config (`KeepsBlockSizes`).
    """

    gate_names = ()
    weight_dropout = 0.0

    def weight_drop(self, kernel, training):
        """DropConnect on a recurrent kernel (`weight_dropout`), in training only."""
        if not (training and self.weight_dropout > 0.0):
            return kernel
        return keras.random.dropout(kernel, self.weight_dropout, seed=self.seed_generator)

    def sequence_weights(self, training=False):
        """The recurrent kernel for one sequence (weight-dropped in training)."""
        return self.weight_drop(self.recurrent_kernel, training)

    def input_dropout(self, inputs, training):
        """Apply the cell's input dropout mask to one step or a whole sequence."""
        if not (training and 0.0 < self.dropout < 1.0):
            return inputs
        step = inputs[:, 0, :] if len(inputs.shape) == 3 else inputs
        mask = self.get_dropout_mask(step)
        return inputs * (keras.ops.expand_dims(mask, 1) if len(inputs.shape) == 3 else mask)

    def project(self, inputs, kernel, bias, training):
        """`dropout(inputs) @ kernel + bias`; a sequence comes back time-major.

        A `(batch, time, input_dim)` sequence is transposed (the narrow side) and
        multiplied as one `(time * batch, input_dim)` matrix (`affine`), which is
        much faster on CPU than a broadcast batched matmul, and is what the time
        loop consumes.
        """
        x = self.input_dropout(inputs, training)
        if len(x.shape) == 3:
            x = keras.ops.transpose(x, (1, 0, 2))
        return affine(x, kernel, bias)

    def recurrent_dropout_state(self, h_tm1, training):
        if not (training and 0.0 < self.recurrent_dropout < 1.0):
            return h_tm1
        return h_tm1 * self.get_recurrent_dropout_mask(h_tm1)

    @property
    def masked_weights(self):
        return list(self._masked) if self.built else []

    def fused_loop(self, training):
        """A compiled whole-sequence loop, or None to step the cell in `keras_backend.rnn`.

        The loop is called as `loop(projected, initial_state, weights)` with the
        time-major projected sequence and returns time-major outputs and the last states.
        """
        return None

    def fusable(self, training):
        """Whether the cell's compiled loop computes this call: the standard activations
        (tanh, sigmoid) and no recurrent dropout in training (input dropout and weight
        drop happen outside the loop)."""
        standard = (
            self.activation is keras.activations.tanh
            and self.recurrent_activation is keras.activations.sigmoid
        )
        return standard and not (training and self.recurrent_dropout > 0.0)

    def call(self, inputs, states, training=False):
        projected = self.project_inputs(inputs, training=training)
        return self.recurrent_step(projected, states, training=training, weights=self.sequence_weights(training))


class StockCellMixin(SparseCellMixin):
    """Turns a stock Keras cell (LSTMCell, GRUCell) into a sparse cell.

    The stock cell builds `kernel`, `recurrent_kernel` and `bias` as usual; the mixin
    adds a mask to both kernels with the gate layout `gate_names`, and the
    `weight_dropout` argument (DropConnect on the recurrent kernel). `units` and the
    dropout rates are checked here (the stock cell clamps rates outside [0, 1]).
    """

    def __init__(self, units, dropout=0.0, recurrent_dropout=0.0, weight_dropout=0.0, **kwargs):
        super().__init__(
            positive_int("units", units),
            dropout=fraction("dropout", dropout),
            recurrent_dropout=fraction("recurrent_dropout", recurrent_dropout),
            **kwargs,
        )
        self.weight_dropout = fraction("weight_dropout", weight_dropout)
        self.implementation = 2
        if hasattr(self, "dropout_mask_count"):
            del self.dropout_mask_count

    def build(self, input_shape):
        super().build(input_shape)
        gates = len(self.gate_names)
        self._masked = [
            add_mask(self, self.kernel, num_gates=gates, gate_names=self.gate_names),
            add_mask(self, self.recurrent_kernel, num_gates=gates, gate_names=self.gate_names),
        ]

    def get_config(self):
        return {**super().get_config(), "weight_dropout": self.weight_dropout}


class SparseRNN(keras.layers.RNN):
    """A `keras.layers.RNN` for sparse cells that hoists the input projection.

    Subclasses set `cell_class`. Constructor keyword arguments other than the RNN's
    own (`return_sequences`, `return_state`, `go_backwards`, `stateful`, `unroll`,
    `zero_output_for_mask`, `activity_regularizer`) and the base layer's (`name`,
    `dtype`, `trainable`) go to the cell.

    The time loop is the cell's `fused_loop(training)` when it returns one and the
    call has no padding mask (SparseLSTM, SparseGRU, RHN with the default
    activations and no recurrent dropout in training); otherwise
    `keras_backend.rnn` steps `recurrent_step`, and `unroll` applies.
    """

    cell_class = None

    def __init__(
        self,
        units,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        zero_output_for_mask=False,
        activity_regularizer=None,
        **kwargs,
    ):
        layer_kwargs = {k: kwargs.pop(k) for k in _LAYER_KWARGS if k in kwargs}
        cell = self.cell_class(
            units,
            dtype=layer_kwargs.get("dtype"),
            trainable=layer_kwargs.get("trainable", True),
            name="cell",
            **kwargs,
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            zero_output_for_mask=zero_output_for_mask,
            activity_regularizer=activity_regularizer,
            **layer_kwargs,
        )
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @tracking.no_automatic_dependency_tracking
    def _create_state_variables(self, batch_size):
        # Under a tf.distribute strategy each replica carries the states of its own streams.
        keras_private.per_replica_state_variables(self, batch_size)

    @property
    def units(self):
        return self.cell.units

    @property
    def masked_weights(self):
        return self.cell.masked_weights

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if tree.is_nested(mask):
            mask = mask[0]
        if mask is not None:
            mask = keras.ops.transpose(mask, (1, 0))
        cell = self.cell
        projected = cell.project_inputs(sequences, training=training)
        weights = cell.sequence_weights(training)

        if not tree.is_nested(initial_state):
            initial_state = [initial_state]
        fused_loop = cell.fused_loop(training) if mask is None else None
        if fused_loop is not None:
            if self.go_backwards:
                projected = keras.ops.flip(projected, axis=0)
            outputs, states = fused_loop(projected, initial_state, weights)
            last_output = outputs[-1]
            return last_output, keras.ops.transpose(outputs, (1, 0, 2)), states

        def step(projected_t, states):
            output, new_states = cell.recurrent_step(projected_t, states, training=training, weights=weights)
            return output, (new_states if tree.is_nested(new_states) else [new_states])

        last_output, outputs, states = keras_backend.rnn(
            step,
            projected,
            initial_state,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            time_major=True,
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )
        return last_output, keras.ops.transpose(outputs, (1, 0, 2)), states

    def get_config(self):
        config = super().get_config()
        cell_config = dict(config.pop("cell")["config"])
        for key in ("name", "trainable", "dtype"):
            cell_config.pop(key, None)
        return {**config, **cell_config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

"""Base class of the sparse recurrent layers: input projection hoisted out of the loop.

A sparse cell splits its step into two parts:

* `project_inputs(inputs, training)`: `x @ W + b` (with input dropout); works on
  one step `(batch, input_dim)` or a whole sequence `(batch, time, input_dim)`.
* `recurrent_step(projected, states, training)`: the gate math, given the projected
  input of one step.

`cell.call` chains the two for one step, so the cell works on its own inside
`keras.layers.RNN`. `SparseRNN` instead projects the whole sequence with one matmul
before the time loop and runs only `recurrent_step` inside it. Masks cost nothing
here: inactive weights are exactly zero (the masked-weight invariant).
"""

import keras
from keras.src import backend as keras_backend
from keras.src import tree


# Keyword arguments that belong to the RNN layer itself, not to its cell.
_LAYER_KWARGS = ("name", "trainable", "dtype", "autocast", "input_shape", "input_dim", "batch_size")


class SparseCellMixin:
    """Shared protocol code of the sparse cells (mixed into a stock Keras cell)."""

    def input_dropout(self, inputs, training):
        """Apply the cell's input dropout mask to one step or a whole sequence."""
        if not (training and 0.0 < self.dropout < 1.0):
            return inputs
        step = inputs[:, 0, :] if len(inputs.shape) == 3 else inputs
        mask = self.get_dropout_mask(step)
        return inputs * (keras.ops.expand_dims(mask, 1) if len(inputs.shape) == 3 else mask)

    def recurrent_dropout_state(self, h_tm1, training):
        if not (training and 0.0 < self.recurrent_dropout < 1.0):
            return h_tm1
        return h_tm1 * self.get_recurrent_dropout_mask(h_tm1)

    @property
    def masked_weights(self):
        return list(self._masked) if self.built else []

    def call(self, inputs, states, training=False):
        projected = self.project_inputs(inputs, training=training)
        return self.recurrent_step(projected, states, training=training)


def single_dropout_mask(cell):
    """Use one input and one recurrent dropout mask shared by all gates.

    Stock Keras cells switch to one mask per gate when `recurrent_dropout > 0`
    (their `implementation=1`); the sparse cells always share one mask, which is
    what lets the input projection run once for the whole sequence.
    """
    cell.implementation = 2
    if hasattr(cell, "dropout_mask_count"):
        del cell.dropout_mask_count


class SparseRNN(keras.layers.RNN):
    """A `keras.layers.RNN` for sparse cells that hoists the input projection.

    Subclasses set `cell_class`. Constructor keyword arguments other than the RNN's
    own (`return_sequences`, `return_state`, `go_backwards`, `stateful`, `unroll`,
    `zero_output_for_mask`, `activity_regularizer`) and the base layer's (`name`,
    `dtype`, `trainable`) go to the cell.
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

    @property
    def units(self):
        return self.cell.units

    @property
    def masked_weights(self):
        return self.cell.masked_weights

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if tree.is_nested(mask):
            mask = mask[0]
        cell = self.cell
        projected = cell.project_inputs(sequences, training=training)

        def step(projected_t, states):
            output, new_states = cell.recurrent_step(projected_t, states, training=training)
            return output, (new_states if tree.is_nested(new_states) else [new_states])

        if not tree.is_nested(initial_state):
            initial_state = [initial_state]
        return keras_backend.rnn(
            step,
            projected,
            initial_state,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )

    def get_config(self):
        config = super().get_config()
        cell_config = dict(config.pop("cell")["config"])
        for key in ("name", "trainable", "dtype"):
            cell_config.pop(key, None)
        return {**config, **cell_config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

"""What a training run carries besides its weights: step counter, RNN states, dropout seeds."""

import keras

from keras_selfish import distribution
from keras_selfish.keras_private import flatten_layers


def optimizer_step(model):
    """The optimizer's step counter `model.optimizer.iterations` as a Python int."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def stateful_layers(model):
    """Every stateful RNN layer nested in `model`."""
    return [layer for layer in flatten_layers(model, include_self=False) if getattr(layer, "stateful", False) and hasattr(layer, "reset_state")]


def rnn_states(model):
    """The carried state variables of every stateful RNN layer (built ones) in `model`."""
    return [state for layer in stateful_layers(model) if getattr(layer, "states", None) is not None for state in layer.states]


def reset_rnn_states(model):
    """Zero the carried states of every stateful RNN layer in `model`."""
    for layer in stateful_layers(model):
        layer.reset_state()


def carried_variables(model):
    """Variables `save_weights` leaves out but a resumed run needs: RNN states, dropout seeds."""
    seeds = [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
    return rnn_states(model) + seeds


def carried_values(model):
    """numpy values of `carried_variables(model)`; under a strategy the RNN states of all replicas, joined along the batch."""
    return distribution.read_states(carried_variables(model))


def assign_carried(model, values):
    """Write `carried_values` (e.g. from a checkpoint) back; under a strategy each replica takes its streams' states."""
    for variable, value in zip(carried_variables(model), values):
        distribution.write_states(variable, value)

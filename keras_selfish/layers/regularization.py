"""Locked (variational) dropout: one dropout mask per sequence, shared by all time steps."""

import keras

from keras_selfish.layers.arguments import fraction


@keras.saving.register_keras_serializable(package="keras_selfish")
class LockedDropout(keras.layers.Dropout):
    """Dropout with one mask per sequence and feature, repeated over time (AWD-LSTM).

    Input and output: `(batch, time, features)`.

    Args:
        rate: fraction of features to drop, in [0, 1).
        seed: int, for reproducible masks.
    """

    def __init__(self, rate, seed=None, **kwargs):
        kwargs.pop("noise_shape", None)
        super().__init__(fraction("rate", rate), noise_shape=(None, 1, None), seed=seed, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("noise_shape", None)
        return config

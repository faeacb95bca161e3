"""SNT-ASGD and evaluation with its averaged weights."""

from keras_selfish.optimizers.averaged import averaged_weights
from keras_selfish.optimizers.sntasgd import SNTASGD

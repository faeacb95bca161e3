"""keras-selfish: intrinsically sparse RNN training (Selfish-RNN) for Keras 3.

    import keras_selfish as ks
    model = ...  # built from ks.layers
    ks.sparsity.initialize(model, density=0.33, seed=0)
"""

from keras_selfish import callbacks
from keras_selfish import comparison
from keras_selfish import data
from keras_selfish import distribution
from keras_selfish import export
from keras_selfish import files
from keras_selfish import layers
from keras_selfish import losses
from keras_selfish import models
from keras_selfish import optimizers
from keras_selfish import plots
from keras_selfish import model_state
from keras_selfish import sparsity
from keras_selfish import runs
from keras_selfish import training

__version__ = "0.1.0"

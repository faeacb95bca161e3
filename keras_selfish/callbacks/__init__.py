"""Keras callbacks that change the sparse topology during `model.fit`."""

from keras_selfish.callbacks.averaging import NonMonotonicTrigger
from keras_selfish.callbacks.averaging import SwapAveragedWeights
from keras_selfish.callbacks.checkpoint import BestWeights
from keras_selfish.callbacks.checkpoint import Checkpoint
from keras_selfish.callbacks.checkpoint import StopOnNaN
from keras_selfish.callbacks.checkpoint import read_checkpoint
from keras_selfish.callbacks.checkpoint import write_checkpoint
from keras_selfish.callbacks.drop_and_grow import DropAndGrow
from keras_selfish.callbacks.drop_and_grow import SelfishRNN
from keras_selfish.callbacks.language_model import EpochHistory
from keras_selfish.callbacks.language_model import PerplexityLogger
from keras_selfish.callbacks.language_model import ResetStates
from keras_selfish.callbacks.pruning import GradualMagnitudePruning
from keras_selfish.callbacks.topology_update import TopologyUpdate

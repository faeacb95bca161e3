"""Deployment: pruned SavedModel, sparse TFLite and a LiteRT runner."""

from keras_selfish.export.inference import InferenceModel
from keras_selfish.export.inspect import operators
from keras_selfish.export.inspect import weight_tensors
from keras_selfish.export.runner import TFLiteRunner
from keras_selfish.export.writers import saved_model
from keras_selfish.export.writers import tflite

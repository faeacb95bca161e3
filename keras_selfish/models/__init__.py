"""Language-model presets built from the sparse layers."""

from keras_selfish.models.language_model import ARCHS
from keras_selfish.models.language_model import LanguageModel
from keras_selfish.models.language_model import language_model
from keras_selfish.models.presets import PRESETS
from keras_selfish.models.presets import preset

"""Corpora and truncated-BPTT batching for language modelling."""

from keras_selfish.data.batching import lm_batches
from keras_selfish.data.corpora import Corpus
from keras_selfish.data.corpora import corpus_builder
from keras_selfish.data.corpora import load_corpus
from keras_selfish.data.text import Vocabulary
from keras_selfish.data.text import read_tokens

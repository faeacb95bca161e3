"""Masked layers and cells. Every layer exposes `masked_weights` (the sparsity protocol)."""

from keras_selfish.layers.dense import MaskedDense
from keras_selfish.layers.embedding import MaskedEmbedding
from keras_selfish.layers.gru import SparseGRU
from keras_selfish.layers.gru import SparseGRUCell
from keras_selfish.layers.lstm import SparseLSTM
from keras_selfish.layers.lstm import SparseLSTMCell
from keras_selfish.layers.onlstm import ONLSTM
from keras_selfish.layers.onlstm import ONLSTMCell
from keras_selfish.layers.regularization import LockedDropout
from keras_selfish.layers.rhn import RHN
from keras_selfish.layers.rhn import RHNCell
from keras_selfish.layers.sparse_rnn import SparseRNN

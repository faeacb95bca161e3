"""Masks, initial distributions and statistics, all through the masked-weight protocol."""

from keras_selfish.sparsity.distance import topology_distance
from keras_selfish.sparsity.distributions import active_counts
from keras_selfish.sparsity.flops import flops
from keras_selfish.sparsity.initialize import initialize
from keras_selfish.sparsity.masked_weight import KeepsBlockSizes
from keras_selfish.sparsity.masked_weight import MaskConstraint
from keras_selfish.sparsity.masked_weight import MaskedWeight
from keras_selfish.sparsity.masked_weight import apply_masks
from keras_selfish.sparsity.masked_weight import collect
from keras_selfish.sparsity.summary import summary
from keras_selfish.sparsity.summary import total_active
from keras_selfish.sparsity import blocks
from keras_selfish.sparsity import fused_update
from keras_selfish.sparsity import topology

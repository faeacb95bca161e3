"""SNT-ASGD: sparse non-monotonically triggered averaged SGD (Selfish-RNN, section 5)."""

import contextlib

import keras
from keras import ops
import tensorflow as tf

from keras_selfish.sparsity.masked_weight import MaskConstraint
from keras_selfish.sparsity.masked_weight import mask_of


def accumulator_dtype(variable):
    """Dtype of the average and step counter of `variable`: float64 for float64
    weights, else float32 (a 16-bit counter stops at 2048 and a 16-bit running
    average loses the small late updates)."""
    return "float64" if variable.dtype == "float64" else "float32"


@tf.function(jit_compile=True)
def averaged(weights, average, count, mask):
    """One averaging step; returns `(new_average, new_count)`.

    `average` and `count` are in `accumulator_dtype`, `weights` in the weight's
    dtype, `mask` (None for dense parameters) in the counter's. XLA fuses it into
    one pass over the weight (about 1.5x fewer memory passes than the unfused ops).
    """
    new_count = count + 1.0
    if mask is not None:
        new_count = new_count * mask
    n = ops.cast(new_count, average.dtype)
    weights = ops.cast(weights, average.dtype)
    mu = 1.0 / ops.maximum(n - 1.0, 1.0)
    new_average = ops.where(n <= 2.0, weights, average + mu * (weights - average))
    if mask is not None:
        new_average = new_average * ops.cast(mask, average.dtype)
    return new_average, new_count


@tf.function(jit_compile=True, autograph=False)
def clip_scale(squares, clip_norm):
    """Keras's `clip_by_global_norm` factor from the gradients' squared norms, one fused pass.

    `squares`: the gradients (tensors, or an `IndexedSlices`'s values, as Keras
    squares them), each summed squared as Keras's `global_norm` does.
    """
    norm = tf.sqrt(tf.reduce_sum(tf.stack([tf.reduce_sum(tf.square(g)) for g in squares])))
    return clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)


@tf.function(jit_compile=True, autograph=False)
def sgd_update(weights, gradient, scale, learning_rate, decay, mask):
    """`((w - w * decay * lr) - (g * scale) * lr) * mask`, one fused pass over the weight.

    What Keras runs as weight decay, clipping, the SGD step and the mask constraint
    (four passes); `decay`, `scale` or `mask` None leaves that term out.
    """
    if decay is not None:
        weights = weights - weights * decay * learning_rate
    if scale is not None:
        gradient = gradient * tf.cast(scale, gradient.dtype)
    weights = weights - gradient * learning_rate
    return weights if mask is None else weights * mask


@contextlib.contextmanager
def masks_in_the_update(variables):
    """Lift the plain `MaskConstraint` off `variables` while the update step masks them itself.

    Yields `{id(variable): its MaskConstraint}` of the lifted ones (constraints, not
    mask variables, which an optimizer attribute would track as its own).
    """
    lifted = [v for v in variables if isinstance(v.constraint, MaskConstraint) and v.constraint.inner is None]
    constraints = [v.constraint for v in lifted]
    for v in lifted:
        v.constraint = None
    try:
        yield dict(zip(map(id, lifted), constraints))
    finally:
        for v, constraint in zip(lifted, constraints):
            v.constraint = constraint


@keras.saving.register_keras_serializable(package="keras_selfish")
class SNTASGD(keras.optimizers.Optimizer):
    """Plain SGD that switches to sparse per-element weight averaging.

    Until `start_averaging()` (usually called by `ks.callbacks.NonMonotonicTrigger`)
    this is SGD without momentum: `w <- w - lr * g` (with Keras's `weight_decay`,
    `w <- w - lr * wd * w` first, which for SGD equals the L2 term `g + wd * w` of the
    authors' PyTorch optimizer). Once averaging is on it also keeps, for every
    weight, a running average `ax` and a step counter `n` (ASGD with `t0 = 0`,
    `lambd = 0`, so the step size stays `lr`):

        n  <- (n + 1) * mask
        mu  = 1 if n <= 2 else 1 / (n - 1)
        ax <- w if mu == 1 else ax + mu * (w - ax)
        ax <- ax * mask

    For masked weights (found through the masked-weight protocol: the weight's
    `MaskConstraint`) `n` is per element, so a weight restarts its average when it
    becomes active; dense parameters (biases) have one counter. Topology updates
    (`ks.callbacks.DropAndGrow`) reset `ax` and `n` to 0 where the topology changed.

    `ax` and `n` are float32 (float64 for float64 weights), also for 16-bit
    weights, and the averaging flag is a float32 variable: every variable the
    update step reads is a float, which XLA can place on a GPU (an int32 variable
    stays in host memory), and the counter is exact up to 2**24 (16.7 million)
    averaged steps (2**53 in float64). Past that `n` stops growing and `ax` becomes
    an exponential average with rate `1 / (2**24 - 1)`.

    Outside a `tf.distribute` strategy the step is fused: the global-norm factor
    is one XLA pass over the gradients, and weight decay, clipping, the SGD step and
    the mask constraint (`w <- w * M` of masked weights, which Keras would run as a
    separate pass) are one XLA pass per weight, `w <- ((w - w wd lr) - (g s) lr) M`,
    Keras's sequence of operations (equal to float rounding). Embedding gradients
    (`IndexedSlices`) are densified, as Keras's clipping densifies them. Under a
    strategy the step is Keras's, op by op. The averaging visits every weight at
    each step, since the counter of every active weight advances; it runs as one
    XLA-fused pass per weight.

    Evaluate with the averages through `ks.optimizers.averaged_weights(model)` or
    the `ks.callbacks.SwapAveragedWeights` callback; training always continues on
    the raw weights.

    Args:
        learning_rate: positive float or schedule (the paper: 40 for LSTM, 15 for RHN).
        weight_decay: decoupled decay as in Keras (the paper: 1.2e-6), or None.
        clipnorm, clipvalue, global_clipnorm: Keras gradient clipping (the paper:
            `global_clipnorm=0.25`).
        gradient_momentum: None, or a coefficient `beta` in (0, 1): then the optimizer
            also keeps, for every weight, the momentum buffer `m <- beta * m + g` of
            the clipped gradients (PyTorch SGD's `momentum_buffer`), in the slots
            `momentums`, as `keras.optimizers.SGD(momentum=beta)` names them. The
            update does not use it: it is there for growth rules that score on
            momentum (SNFS, `DropAndGrow(grow="momentum")`), which SNT-ASGD would
            otherwise lack. Costs one more slot and one pass per weight per step.
        **kwargs: other `keras.optimizers.Optimizer` arguments.
    """

    def __init__(
        self,
        learning_rate=40.0,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        gradient_momentum=None,
        name="sntasgd",
        **kwargs,
    ):
        if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
        if gradient_momentum is not None and not 0.0 < gradient_momentum < 1.0:
            raise ValueError(f"gradient_momentum must be None or in (0, 1), got {gradient_momentum!r}.")
        if weight_decay is not None and not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative or None, got {weight_decay!r}.")
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            name=name,
            **kwargs,
        )
        self.gradient_momentum = None if gradient_momentum is None else float(gradient_momentum)
        # The fused step being traced: its global-norm factor and the constraints lifted off the masked weights.
        self._clip_scale, self._lifted_masks = None, {}

    def _fused(self):
        return not tf.distribute.has_strategy()

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`; in the fused step the update masks the weights (no constraint pass)."""
        if not self._fused():
            return super().apply(grads, trainable_variables)
        # Until the optimizer is built (in this call) the constraints stay: `build` finds the masks through them.
        variables = () if not self.built else self._trainable_variables if trainable_variables is None else list(trainable_variables)
        try:
            with masks_in_the_update(variables) as self._lifted_masks:
                return super().apply(grads, trainable_variables)
        finally:
            self._clip_scale, self._lifted_masks = None, {}

    def _clip_gradients(self, grads):
        if not (self._fused() and self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        squares = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        self._clip_scale = clip_scale(squares, tf.constant(self.global_clipnorm, squares[0].dtype))
        return grads

    def _apply_weight_decay(self, variables):
        if not self._fused():
            super()._apply_weight_decay(variables)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._averaging = self.add_variable((), initializer="zeros", dtype="float32", name="averaging")
        self._averaging_start = self.add_variable((), initializer="zeros", dtype="int64", name="averaging_start")
        self._averages = [self._accumulator(v, "average", v.shape) for v in variables]
        self._counts = [self._accumulator(v, "count", v.shape if mask_of(v) is not None else ()) for v in variables]
        if self.gradient_momentum is not None:
            self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def get_config(self):
        return {**super().get_config(), "gradient_momentum": self.gradient_momentum}

    def _accumulator(self, variable, name, shape):
        """A zero `shape` slot of `variable` in `accumulator_dtype`, named as Keras names slots."""
        dtype = accumulator_dtype(variable)
        if dtype == variable.dtype and tuple(shape) == tuple(variable.shape):
            return self.add_variable_from_reference(variable, name)  # placed with the weight
        return self.add_variable(shape, dtype=dtype, name=f"{variable.path.replace('/', '_')}_{name}")

    @property
    def averaging(self):
        """Whether averaging has started."""
        return bool(ops.convert_to_numpy(self._averaging) > 0)

    @property
    def averaging_start(self):
        """Optimizer step at which averaging started (meaningful once `averaging`)."""
        return int(ops.convert_to_numpy(self._averaging_start))

    def start_averaging(self):
        """Switch from SGD to averaged SGD (no retracing: flips a variable)."""
        if not self.built:
            raise ValueError("The optimizer is not built yet: start averaging after training has started.")
        for count in self._counts:
            count.assign(ops.zeros(count.shape, count.dtype))
        self._averaging_start.assign(ops.cast(self.iterations, "int64"))
        self._averaging.assign(1.0)

    def averages(self):
        """`[(variable, average)]` for every trainable variable (averages in `accumulator_dtype`)."""
        return [(v, self._averages[self._get_variable_index(v)]) for v in self._trainable_variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        index = self._get_variable_index(variable)
        weight = self._trainable_variables[index]
        mask = self._lifted_masks[id(weight)].mask if id(weight) in self._lifted_masks else mask_of(weight)
        if self._fused():
            self._fused_update(gradient, variable, learning_rate, index, mask)
        else:
            self.assign_sub(variable, ops.multiply(ops.cast(gradient, variable.dtype), learning_rate))
            if self.gradient_momentum is not None:
                momentum = self.momentums[index]
                self.assign(momentum, ops.add(ops.multiply(momentum, self.gradient_momentum), ops.convert_to_tensor(gradient, momentum.dtype)))
        average, count = self._averages[index], self._counts[index]

        def update_average():
            new_average, new_count = averaged(
                tf.convert_to_tensor(variable),
                tf.convert_to_tensor(average.value),
                tf.convert_to_tensor(count.value),
                None if mask is None else tf.cast(mask.value, count.dtype),
            )
            self.assign(average, new_average)
            self.assign(count, new_count)

        ops.cond(self._averaging > 0, update_average, lambda: None)

    def _fused_update(self, gradient, variable, learning_rate, index, mask):
        """Weight decay, clipping, SGD step and mask of one weight in one pass (see the class docstring)."""
        decay = None
        if self.weight_decay is not None and self._use_weight_decay(self._trainable_variables[index]):
            decay = ops.cast(self.weight_decay, variable.dtype)
        constrained = isinstance(self._trainable_variables[index].constraint, MaskConstraint)  # it masks after the step
        mask = None if mask is None or constrained else tf.cast(mask.value, variable.dtype)
        if isinstance(gradient, tf.IndexedSlices) and self._clip_scale is None:  # unclipped rows: a row update, as Keras
            if decay is not None:
                self.assign_sub(variable, variable * decay * learning_rate)
            self.assign_sub(variable, ops.multiply(ops.cast(gradient, variable.dtype), learning_rate))
            if mask is not None:
                self.assign(variable, variable * mask)
        else:
            gradient = tf.cast(tf.convert_to_tensor(gradient), variable.dtype)
            self.assign(variable, sgd_update(tf.convert_to_tensor(variable), gradient, self._clip_scale, learning_rate, decay, mask))
        if self.gradient_momentum is not None:
            momentum = self.momentums[index]
            clipped = gradient if self._clip_scale is None else gradient * tf.cast(self._clip_scale, gradient.dtype)
            self.assign(momentum, ops.add(ops.multiply(momentum, self.gradient_momentum), ops.convert_to_tensor(clipped, momentum.dtype)))

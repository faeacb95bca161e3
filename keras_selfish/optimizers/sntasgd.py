"""SNT-ASGD: sparse non-monotonically triggered averaged SGD (Selfish-RNN, section 5)."""

import warnings

import keras
from keras import ops
import tensorflow as tf

from keras_selfish import keras_private
from keras_selfish.optimizers.clipping import clip_scale
from keras_selfish.optimizers.clipping import squared_norm
from keras_selfish.optimizers.clipping import summed_rows
from keras_selfish.sparsity.masked_weight import constraint_beyond_mask
from keras_selfish.sparsity.masked_weight import mask_of


def accumulator_dtype(variable):
    """Dtype of the average and step counter of `variable`: float64 for float64
    weights, else float32 (a 16-bit counter stops at 2048 and a 16-bit running
    average loses the small late updates)."""
    return "float64" if variable.dtype == "float64" else "float32"


@tf.function(jit_compile=True, autograph=False)
def sgd_step(weights, gradient, mask, weight_decay, clip_scale, learning_rate):
    """One masked SGD step of a weight, `(weights.shape)`, as one fused pass over it.

    Computes, in Keras's order of operations, what Keras's `apply` computes in
    four passes: decoupled weight decay `w - w * wd * lr`, the step
    `w - (g * clip_scale) * lr` and the mask constraint `w * mask`. `mask` and
    `weight_decay` may be None (not masked, no decay); scalars are in the weight's dtype.
    """
    if weight_decay is not None:
        weights = weights - weights * weight_decay * learning_rate
    weights = weights - gradient * clip_scale * learning_rate
    return weights if mask is None else weights * mask


@tf.function(jit_compile=True, autograph=False)
def sgd_row_step(weights, rows, indices, mask, weight_decay, clip_scale, learning_rate):
    """`sgd_step` for a gradient given as rows: `rows (n, ...)` of `weights` at `indices (n,)`.

    An index may repeat only if its later rows are zero (see `summed_rows`), so
    the result is `sgd_step` of the dense gradient: the decay and the mask pass
    over the whole table, the step touches only the `n` rows.
    """
    if weight_decay is not None:
        weights = weights - weights * weight_decay * learning_rate
    if mask is not None:
        weights = weights * mask
        rows = rows * tf.gather(mask, indices)
    return tf.tensor_scatter_nd_sub(weights, indices[:, None], rows * clip_scale * learning_rate)


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

    On one device, each step (`apply`) is one XLA-fused pass per weight: clipping,
    weight decay, the SGD step and the mask constraint together. Embedding
    gradients (`IndexedSlices`) are applied as row updates, and global-norm
    clipping uses the norm of the dense gradient (a word's repeated rows summed;
    Keras 3's own clipping sums their squares instead, see
    `ks.optimizers.clipping`), as the authors' `clip_grad_norm_` does. The
    averaging visits every weight at each step, since the counter of every
    active weight advances; it runs as one more XLA-fused pass per weight.

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
        keras_private.exact_gradient_clipping(self)

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

    def apply(self, grads, trainable_variables=None):
        """Keras's `Optimizer.apply`, with every weight's update in one fused pass.

        Per weight, one XLA-fused pass (`sgd_step`) does Keras's global-norm
        clipping (the norm itself is one read of the gradients), weight decay,
        the SGD step and the mask constraint, which Keras's `apply` runs as four
        passes; an `IndexedSlices` gradient (an embedding's) updates only its
        rows, and its norm is that of the dense gradient (repeated rows summed,
        `ks.optimizers.clipping`). Other constraints still run after the step.
        With `clipnorm` or `clipvalue`, or under a `tf.distribute` strategy,
        Keras's own `apply` runs, with `update_step` below and
        `ks.keras_private.exact_gradient_clipping` (all-reduce, then clip the
        dense gradient's norm); both paths give the same weights to float rounding.
        """
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not pairs or self.clipnorm or self.clipvalue or tf.distribute.has_strategy():
            return super().apply(grads, trainable_variables)
        if len(pairs) < len(variables):
            missing = [v.path for g, v in zip(grads, variables) if g is None]
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing the loss (as Keras's apply warns).")
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(variables)
        with keras.name_scope(self.name, caller=self):
            if self.loss_scale_factor is not None:
                pairs = [(g / self.loss_scale_factor, v) for g, v in pairs]
            learning_rate = self.learning_rate
            steps = [self._fused_step(g, v) for g, v in pairs]
            scale = clip_scale([norm for _, norm in steps], self.global_clipnorm) if self.global_clipnorm else tf.constant(1.0, "float64")
            for (gradient, variable), (step, _) in zip(pairs, steps):
                step(ops.cast(scale, variable.dtype), ops.cast(learning_rate, variable.dtype))
                if self.gradient_momentum is not None:
                    self._update_momentum(variable, ops.convert_to_tensor(gradient, variable.dtype) * ops.cast(scale, variable.dtype))

            def update_averages():
                for _, variable in pairs:
                    self._update_average(variable)

            ops.cond(self._averaging > 0, update_averages, lambda: None)
            for _, variable in pairs:  # after the averages, as in Keras's apply
                constraint = constraint_beyond_mask(variable)
                if constraint is not None:
                    variable.assign(constraint(variable))
        self.iterations.assign_add(1)

    def _fused_step(self, gradient, variable):
        """`(step, squared norm of the gradient)`; `step(clip_scale, learning_rate)` updates `variable`."""
        mask = mask_of(variable)
        mask = None if mask is None else ops.cast(mask.value, variable.dtype)
        decay = ops.cast(self.weight_decay, variable.dtype) if self.weight_decay and self._use_weight_decay(variable) else None
        value = variable.value if isinstance(variable, keras.Variable) else variable
        if isinstance(gradient, tf.IndexedSlices):
            rows, indices = summed_rows(gradient, variable.shape[0])
            rows = ops.cast(rows, variable.dtype)
            return (lambda *scalars: value.assign(sgd_row_step(value, rows, indices, mask, decay, *scalars))), squared_norm(rows)
        gradient = ops.cast(gradient, variable.dtype)
        return (lambda *scalars: value.assign(sgd_step(value, gradient, mask, decay, *scalars))), squared_norm(gradient)

    def _update_momentum(self, variable, gradient):
        """`m <- beta * m + g` (the clipped gradient) of `variable`'s momentum slot."""
        momentum = self.momentums[self._get_variable_index(variable)]
        self.assign(momentum, ops.add(ops.multiply(momentum, self.gradient_momentum), ops.convert_to_tensor(gradient, momentum.dtype)))

    def _update_average(self, variable):
        """One averaging step (`averaged`) of `variable`'s average and counter, from its updated value."""
        index = self._get_variable_index(variable)
        average, count = self._averages[index], self._counts[index]
        mask = mask_of(self._trainable_variables[index])
        new_average, new_count = averaged(
            tf.convert_to_tensor(variable),
            tf.convert_to_tensor(average.value),
            tf.convert_to_tensor(count.value),
            None if mask is None else tf.cast(mask.value, count.dtype),
        )
        self.assign(average, new_average)
        self.assign(count, new_count)

    def update_step(self, gradient, variable, learning_rate):
        """The step of Keras's `apply` (see `apply`): SGD on the clipped gradient, momentum slot, averaging."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        self.assign_sub(variable, ops.multiply(ops.cast(gradient, variable.dtype), learning_rate))
        if self.gradient_momentum is not None:
            self._update_momentum(variable, gradient)
        ops.cond(self._averaging > 0, lambda: self._update_average(variable), lambda: None)

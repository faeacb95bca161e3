"""Drop-and-grow topology updates: Selfish-RNN, SET, SNFS and RigL through one callback."""

import numpy as np
import tensorflow as tf

from keras_selfish.callbacks.topology_update import TopologyUpdate
from keras_selfish.layers.arguments import fraction
from keras_selfish.model_state import carried_variables
from keras_selfish.sparsity import fused_update
from keras_selfish.sparsity import topology
from keras_selfish.sparsity.rewire import Change

REDISTRIBUTIONS = ("cross_gate", "gate_wise")
SCHEDULES = ("cosine", "constant")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; use one of {list(allowed)}.")
    return value


class DropAndGrow(TopologyUpdate):
    """Periodic drop-and-grow of every masked weight at a fixed parameter count.

    At each update, every masked matrix (cross_gate) or gate block (gate_wise)
    drops `k = ceil(p_t * active)` active weights and grows exactly k inactive ones,
    so its active count never changes. Grown weights start at exactly 0, and the
    weight and every optimizer slot (momentum, Adam moments, SNT-ASGD averages and
    counters, EMA) are reset to 0 wherever the topology changed.

    Combinations give the dynamic-sparse-training methods:
    Selfish-RNN `("magnitude", "random", "cross_gate")` (see `SelfishRNN`),
    SET `("set", "random")`, SNFS `("magnitude", "momentum")`,
    RigL `("magnitude", "gradient")`. Static sparse training is
    `ks.sparsity.initialize` without this callback.

    Args:
        drop: "magnitude" (the k smallest |w|) or "set" (half the smallest positive,
            half the largest negative weights), or a `topology.DropRule`.
        grow: "random" (uniform among inactive positions), "momentum" (largest
            |momentum| of the optimizer; SNFS) or "gradient" (largest |dL/dW| of the
            dense weight on one batch of `data`; RigL), or a `topology.GrowRule`.
            Ties go to the lower flat position.
        redistribution: "cross_gate" (each matrix keeps its count, its gates
            compete: the paper's cell weight redistribution) or "gate_wise" (every
            gate block keeps its own count; the paper's ablation).
        drop_fraction: initial drop rate `p_0`, in (0, 1).
        schedule: "cosine" (from `drop_fraction` at step 0 to `final_drop_fraction`
            at `end_step`: `p_t = p_min + (p_0 - p_min) (1 + cos(pi t / T)) / 2`)
            or "constant".
        update_every: "epoch" or a number of optimizer steps (see `TopologyUpdate`).
        end_step: last step that may update, and the cosine horizon `T`; default
            the total steps of the `fit` call (epochs x steps per epoch).
        seed: int for reproducible growth; the same seed, step and model give the
            same masks, also after resuming. None draws a seed at construction;
            it is saved by `get_state` (so a resumed run continues the same random
            stream), and under a `tf.distribute` strategy with several replicas
            every worker takes the chief's seed at train begin (one all-reduce),
            so workers that construct their own callback grow the same weights.
        exclude: layer names or weight paths to leave alone (e.g. "embedding").
        data: for grow="gradient": a `tf.data.Dataset` or iterable of `(x, y)` or
            `(x, y, sample_weight)` batches; one batch is used per update (cycled).
            The model's RNN states, dropout seeds, other non-trainable state and
            metrics are restored afterwards. Refused on more than one replica (the
            probe runs outside the train step).
        final_drop_fraction: floor of the cosine schedule (the paper: 0.005).
        verbose: 1 prints one line per update.

    Block masks (`ks.sparsity.initialize(..., block_size=b)`): every rule moves
    whole blocks (along a kernel's inputs, an embedding table's features) of a
    matrix whose `MaskedWeight.block_size` is b, on block scores
    (the sum of the weights' scores over a block: the L1 norm for "magnitude", the
    sum of |momentum| or |gradient|), and `k` counts active blocks; gates split the
    columns, so gate-wise counts are per gate in blocks. The Selfish-RNN rule stays
    compiled (`fused_update.BlockWorkspace`).

    Non-finite weights: an update never changes the active count. A loss that
    is NaN or infinite stops updates for the rest of the `fit` call (see
    `TopologyUpdate`), and an update that meets a NaN or infinite active weight
    (or growth score) raises a `ValueError` naming the matrix and the count, and
    writes nothing. The compiled and numpy rules refuse alike.
    """

    def __init__(
        self,
        drop="magnitude",
        grow="random",
        redistribution="cross_gate",
        drop_fraction=0.5,
        schedule="cosine",
        update_every="epoch",
        end_step=None,
        seed=None,
        exclude=(),
        data=None,
        final_drop_fraction=0.005,
        verbose=1,
    ):
        super().__init__(update_every=update_every, end_step=end_step, exclude=exclude, verbose=verbose)
        self.drop_rule, self.grow_rule = topology.drop_rule(drop), topology.grow_rule(grow)
        self.drop, self.grow = self.drop_rule.name, self.grow_rule.name
        self.redistribution = _choice("redistribution", redistribution, REDISTRIBUTIONS)
        self.schedule = _choice("schedule", schedule, SCHEDULES)
        self.drop_fraction = fraction("drop_fraction", drop_fraction, zero_allowed=False)
        self.final_drop_fraction = fraction("final_drop_fraction", final_drop_fraction, zero_allowed=False)
        self.grow_rule.check_arguments(data)
        self.data = data
        self.seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)
        self._batches = None
        self._scores = None
        self._workspaces = {}

    def drop_rate(self, step):
        """The drop rate `p_t` at optimizer step `step`."""
        if self.schedule == "constant":
            return self.drop_fraction
        return topology.cosine_drop_rate(step, self._end, self.drop_fraction, self.final_drop_fraction)

    def get_state(self):
        return {**super().get_state(), "seed": self.seed}

    def set_state(self, state):
        super().set_state(state)
        if "seed" in state:  # checkpoints written before the seed was saved have none
            self.seed = int(state["seed"])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            if self.grow == "gradient":
                raise ValueError(
                    f"grow='gradient' (RigL) takes its gradient on a global batch outside the train step, which a stateful "
                    f"model split over {strategy.num_replicas_in_sync} replicas cannot run; use grow='random' or 'momentum', "
                    f"or train on one device."
                )
            self.seed = chief_seed(strategy, self.seed)
        # The Selfish-RNN rule runs compiled (fused_update); its buffers and kernels
        # are made ready now rather than in the first update.
        compiled = fused_update.handles(self.drop_rule, self.grow_rule, self.redistribution == "gate_wise")
        previous, self._workspaces = self._workspaces, {}
        for index, mw in enumerate(self.weights_):
            if compiled and fused_update.supports(mw.size, mw.variable.dtype):
                workspace = previous.get(index)
                blocks = mw.blocks
                if workspace is None or not workspace.fits(mw.size, mw.variable.dtype, blocks.size, blocks.axis):
                    workspace = fused_update.workspace(mw.shape, mw.variable.dtype, blocks.size, blocks.axis)
                self._workspaces[index] = workspace

    def on_train_end(self, logs=None):
        self._workspaces = {}  # a few bytes per weight, not kept between fits

    def check_model(self):
        self.grow_rule.check_model(self)

    def prepare(self, step):
        self._scores = self.grow_rule.raw_scores(self)
        return {"drop_rate": self.drop_rate(step)}

    def update_weight(self, index, mw, mask, values, step, info):
        rng = np.random.default_rng([self.seed, step, index])
        if index in self._workspaces:
            # The Selfish-RNN rule, compiled: same drop set, exactly uniform growth.
            return self._workspaces[index].update(values.reshape(-1), mask.reshape(-1), info["drop_rate"], rng.integers(2**63))
        dropped, grown = topology.update_matrix(
            values,
            mask,
            info["drop_rate"],
            drop=self.drop_rule,
            grow=self.grow_rule,
            scores=None if self._scores is None else self._scores[index],
            rng=rng,
            gate_sections=mw.gate_sections,
            gate_axis=mw.gate_axis,
            gate_wise=self.redistribution == "gate_wise",
            block_size=mw.block_size,
            block_axis=mw.blocks.axis,
        )
        return Change.from_positions(mask, dropped, grown)

    def _next_batch(self):
        if self._batches is None:
            self._batches = iter(self.data)
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.data)
            return next(self._batches)

    def _dense_gradients(self):
        """dL/dW of every masked weight on one batch of `data` (RigL's growth scores).

        The forward pass in training mode moves the carried RNN states, the dropout
        seed states, other non-trainable state (e.g. batch-norm statistics) and the
        metrics; all of them are put back, so training continues as if no probe ran.
        """
        model = self.model
        x, y, sample_weight = _unpack(self._next_batch())
        masks = {id(mw.mask) for mw in self.weights_}
        touched = carried_variables(model) + model.non_trainable_variables + model.metrics_variables
        saved = list({id(v): (v, v.numpy()) for v in touched if id(v) not in masks}.values())
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        grads = tape.gradient(loss, [mw.variable.value for mw in self.weights_])
        for variable, value in saved:
            variable.assign(value)
        return [tf.convert_to_tensor(g).numpy() if g is not None else np.zeros(mw.shape, np.float32) for g, mw in zip(grads, self.weights_)]


_SEED_CHUNKS = (0, 21, 42)  # a seed < 2**63 as three 21-bit integers, exact in float32


def chief_seed(strategy, seed):
    """The `seed` of the chief (replica 0), on every worker and replica of `strategy`.

    Replica 0 contributes its seed, the others zeros, to one SUM all-reduce.
    """
    chunks = [float((seed >> shift) & 0x1FFFFF) for shift in _SEED_CHUNKS]

    def contribution():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.cast(tf.equal(replica, 0), tf.float32) * tf.constant(chunks, tf.float32)

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)
    return sum(int(chunk) << shift for chunk, shift in zip(np.asarray(total), _SEED_CHUNKS))


def _unpack(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("DropAndGrow data must yield (x, y) or (x, y, sample_weight) batches.")
    return tuple(batch) + (None,) * (3 - len(batch))


class SelfishRNN(DropAndGrow):
    """The paper's topology update: magnitude drop, random growth, cross-gate redistribution.

    The drop rate decays with a cosine from `drop_fraction` (the paper: 0.5 to 0.8)
    to 0.005 over the whole run, and the update runs at every epoch end.

    Args:
        drop_fraction: initial drop rate `p_0`.
        update_every, end_step, seed, exclude, verbose: as in `DropAndGrow`.
    """

    def __init__(self, drop_fraction=0.5, update_every="epoch", end_step=None, seed=None, exclude=(), verbose=1):
        super().__init__(
            drop="magnitude",
            grow="random",
            redistribution="cross_gate",
            drop_fraction=drop_fraction,
            schedule="cosine",
            update_every=update_every,
            end_step=end_step,
            seed=seed,
            exclude=exclude,
            verbose=verbose,
        )

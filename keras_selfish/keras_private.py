"""The private Keras APIs this package relies on, each wrapped once.

Keras 3 has no public way to walk every nested layer of a model (RNN cells,
`Bidirectional` halves, layers of nested models) or to find an optimizer's slot
index of a variable. Everything else in the package calls these wrappers, and
`tests/test_keras_private.py` fails loudly if Keras changes them.
"""


def flatten_layers(model, include_self=True):
    """Every layer nested in `model` (cells, wrapped layers, sub-models), each once.

    Args:
        model: a `keras.Layer` or `keras.Model`.
        include_self: whether `model` itself comes first.
    """
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def variable_index(optimizer, variable):
    """Index of `variable` in the per-variable lists of a built `optimizer`.

    Raises:
        KeyError: the optimizer does not train `variable`.
    """
    return optimizer._get_variable_index(variable)


def fix_multi_worker_fit():
    """Make Keras 3's `fit`/`evaluate` run under `tf.distribute.MultiWorkerMirroredStrategy`.

    Keras 3 (TF backend, 3.15 and earlier; keras-team/keras#20585) fails there twice:
    `_maybe_symbolic_build` MEAN-reduces the first batch, a tuple of `PerReplica`,
    which the collective strategy cannot take; and `reduce_per_replica` reduces the
    scalar logs with `axis=0`, which scalars do not have. This patches both, once per
    process: the symbolic build takes the first local replica's batch (it needs the
    shapes only), and rank-0 logs are mean-reduced without an axis (the mean over all
    replicas, as Keras does under `MirroredStrategy`). Other strategies are untouched.
    """
    from keras.src.backend.tensorflow import trainer
    import tensorflow as tf

    if getattr(trainer, "_ks_multi_worker_fixed", False):
        return
    multi_worker = trainer._collective_all_reduce_multi_worker
    reduce_per_replica = trainer.reduce_per_replica

    def reduce_logs(values, strategy, reduction):
        if multi_worker(strategy) and reduction in ("auto", "mean"):
            def mean(value):
                one = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
                if isinstance(one, tf.Tensor) and one.shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return reduce_per_replica(value, strategy, reduction)
            return trainer.tree.map_structure(mean, values)
        return reduce_per_replica(values, strategy, reduction)

    symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def first_replica_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None and multi_worker(self._distribute_strategy):
            for _, _, batches in iterator:
                batch = next(batches)
                data_batch = trainer.tree.map_structure(
                    lambda v: v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v, batch
                )
                break
            iterator = None
        return symbolic_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_logs
    trainer.TensorFlowTrainer._maybe_symbolic_build = first_replica_build
    trainer._ks_multi_worker_fixed = True


def per_replica_state_variables(layer, batch_size):
    """Create the carried states of stateful RNN `layer` as one copy per replica.

    Keras 3's `RNN._create_state_variables` makes them mirrored variables, which a
    `tf.distribute` strategy keeps identical on all replicas (and refuses to assign
    per replica). Here they are `synchronization="on_read"` variables: each replica
    reads and writes its own copy, the states of its own streams; outside a
    strategy they are plain variables. A read outside the replica context gives the
    first replica's copy (`aggregation="only_first_replica"`); reading all of them
    is `ks.distribution.read_states`.
    """
    import keras

    with keras.name_scope(layer.name, caller=layer):
        layer.states = keras.tree.map_structure(
            lambda value: keras.Variable(
                value, trainable=False, dtype=layer.variable_dtype, name="rnn_state", synchronization="on_read", aggregation="only_first_replica"
            ),
            layer.get_initial_state(batch_size),
        )


def exact_gradient_clipping(optimizer):
    """Make `optimizer`'s gradient clipping clip what one device's dense gradient would be.

    Two fixes to Keras 3 (TF backend, 3.15), both in its `_clip_gradients` step:
    * Under a `tf.distribute` strategy Keras clips each replica's own gradient
      before summing them (`_all_reduce_sum_gradients`), so `global_clipnorm`
      bounds every replica's share, not the step, and R replicas train another
      run than one device. Here the gradients are summed first, then clipped, and
      the later sum passes them through.
    * Keras computes the norm of an `IndexedSlices` gradient (an embedding's)
      from its rows as they come, so a word that repeats in the batch counts as
      several small rows instead of one larger one and the norm comes out too
      small. Here the repeated rows are summed first
      (`ks.optimizers.clipping.with_summed_rows`).
    Dense gradients on one device are clipped exactly as before. Idempotent.
    Returns `optimizer`.
    """
    import tensorflow as tf

    from keras_selfish.optimizers.clipping import with_summed_rows

    if getattr(optimizer, "_ks_exact_clipping", False):
        return optimizer
    clip, all_reduce = optimizer._clip_gradients, optimizer._all_reduce_sum_gradients

    def replicated():
        context = tf.distribute.get_replica_context()
        return context if context is not None and context.num_replicas_in_sync > 1 else None

    def summed_then_clipped(grads):
        context = replicated()
        if context is not None:
            summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g in grads if g is not None]))
            grads = [None if g is None else next(summed) for g in grads]
        if optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue:
            grads = [None if g is None else with_summed_rows(g) for g in grads]
        return clip(grads)

    def summed_already(grads_and_vars):
        return list(grads_and_vars) if replicated() is not None else all_reduce(grads_and_vars)

    optimizer._clip_gradients = summed_then_clipped
    optimizer._all_reduce_sum_gradients = summed_already
    optimizer._ks_exact_clipping = True
    return optimizer

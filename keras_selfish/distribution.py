"""Training on more than one device: TensorFlow's strategies, and how text streams map to replicas.

    strategy = ks.distribution.strategy("mirrored")      # "none" | "mirrored" | "multi_worker" (TF_CONFIG)
    with strategy.scope():
        model = ...                                       # built on per_replica_batch(strategy, batch_size)
    model.fit(ks.distribution.distribute(strategy, train_batches), ...)

Streams. A stateful language model's batch holds `B` text streams: row `b` of
batch `t + 1` continues row `b` of batch `t` (`ks.data.lm_batches`). With `R`
replicas, replica `r` (its id in sync: task index x local replicas + local index)
takes rows `r B / R ... (r + 1) B / R - 1` of every global batch, always the same
rows, and carries their RNN states from batch to batch: the stateful layers keep
one state copy per replica (`synchronization="on_read"`). The global batch is
split, never reshuffled, so `R` replicas see the same streams in the same order as
one device with batch `B`; the gradient is the mean over all `B` rows, clipped
after the all-reduce (`ks.keras_private.exact_gradient_clipping`), as on one device,
up to the order of the float sums. Several workers run one replica each. Checkpoints hold the states of the
whole global batch (`read_states`), so a run may resume on another number of
replicas with the same global batch.

Weights, masks and optimizer slots are mirrored: every topology update is computed
on each worker from identical values with the same seed and step, and written to
all its replicas (`ks.sparsity.rewire` falls back to TensorFlow ops for distributed
variables), so masks, weights and slots stay identical everywhere.

Files. As TensorFlow's multi-worker convention has it, every worker writes each
checkpoint (saving reads variables, which may all-reduce across workers), but only
the chief's copy stays: the others write to a temporary that is removed
(`write_path`). `model_dir` must be on a filesystem all workers see.
"""

import contextlib
import json
import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from keras_selfish import files
from keras_selfish import keras_private

NAMES = ("none", "mirrored", "multi_worker")


def strategy(name):
    """The `tf.distribute.Strategy` called `name`.

    "none": TensorFlow's default strategy (one device); "mirrored":
    `tf.distribute.MirroredStrategy` over this machine's GPUs (its CPU without
    one); "multi_worker": `tf.distribute.MultiWorkerMirroredStrategy`, whose
    cluster and task come from the `TF_CONFIG` environment variable. Create it
    before any other TensorFlow op runs: collective ops are configured at startup.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError(
                "--distribution=multi_worker reads the cluster from TF_CONFIG, which is not set; set it on every worker, "
                'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}\'.'
            )
        try:
            json.loads(config)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {config!r}.") from None
        keras_private.fix_multi_worker_fit()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--distribution={name!r} is not one of {', '.join(NAMES)}.")


def replicas(strategy):
    """Replicas in sync (all workers together)."""
    return strategy.num_replicas_in_sync


def per_replica_batch(strategy, batch_size):
    """The streams each replica carries: `batch_size / replicas`.

    Raises:
        ValueError: `batch_size` does not split evenly.
    """
    count = replicas(strategy)
    if batch_size % count:
        raise ValueError(
            f"--batch_size={batch_size} text streams do not split evenly over {count} replicas; give a multiple of {count}."
        )
    return batch_size // count


def distribute(strategy, dataset):
    """`dataset` of global batches, each split in order over the replicas (see the module docstring).

    One device: `dataset` itself. One worker with several replicas: TensorFlow's
    own split (`experimental_distribute_dataset` cuts every global batch along
    dim 0 into consecutive per-replica slices). Several workers, one replica each:
    each worker's input pipeline keeps only its own rows of every global batch
    (`distribute_datasets_from_function`).

    Raises:
        ValueError: the batches have no static size, or workers have several
            replicas each (Keras counts the steps of a per-worker pipeline from its
            elements, one per local replica: run one worker per device instead).
    """
    count = replicas(strategy)
    if count == 1:
        return dataset
    batch_size = dataset.element_spec[0].shape[0]
    if batch_size is None:
        raise ValueError("distributed stateful training needs batches of a static size (e.g. ks.data.lm_batches).")
    rows = per_replica_batch(strategy, batch_size)
    local = len(strategy.extended.worker_devices)
    if local == count:
        return strategy.experimental_distribute_dataset(dataset)
    if local > 1:
        raise ValueError(
            f"--distribution=multi_worker runs one replica per worker, this worker has {local} devices; start one worker "
            f"per device (e.g. CUDA_VISIBLE_DEVICES=<i> for each), or use --distribution=mirrored on one machine."
        )

    def pipeline(context):
        first = context.input_pipeline_id * rows
        return dataset.map(lambda *batch: tuple(t[first : first + rows] for t in batch))

    return strategy.distribute_datasets_from_function(pipeline)


def _per_replica(variable):
    """The backing `tf.Variable` of a carried state with one copy per replica, or None."""
    backing = getattr(variable, "value", variable)
    if isinstance(backing, tf.distribute.DistributedValues) and backing.synchronization == tf.VariableSynchronization.ON_READ:
        return backing
    return None


def read_states(variables):
    """Carried states as numpy arrays; per-replica copies joined along the batch in replica order.

    The copies of all `variables` are gathered in one compiled all-gather (every
    worker must call this at the same point).
    """
    copied = [_per_replica(v) for v in variables]
    distributed = [c for c in copied if c is not None]
    gathered = iter(())
    if distributed:
        strategy = distributed[0].distribute_strategy

        @tf.function
        def gather():
            local = strategy.run(lambda: [tf.identity(c) for c in distributed])
            return [strategy.gather(part, axis=0) for part in local]

        gathered = iter([part.numpy() for part in gather()])
    return [next(gathered) if c is not None else keras.ops.convert_to_numpy(v) for v, c in zip(variables, copied)]


def write_states(variable, value):
    """Write `value` (the whole global batch, as `read_states` returns it) into a carried state."""
    backing = _per_replica(variable)
    if backing is None:
        variable.assign(value)
        return
    strategy = backing.distribute_strategy
    rows = backing.values[0].shape[0]
    value = np.asarray(value)
    if value.shape[0] != rows * strategy.num_replicas_in_sync:
        raise ValueError(
            f"a state of {value.shape[0]} streams does not split into {strategy.num_replicas_in_sync} replicas of {rows}; "
            f"resume with the run's --batch_size."
        )
    parts = strategy.experimental_distribute_values_from_function(
        lambda context: value[context.replica_id_in_sync_group * rows : (context.replica_id_in_sync_group + 1) * rows]
    )
    strategy.run(lambda part: backing.assign(part), args=(parts,))


def task(strategy=None):
    """`(task_type, task_id)` of this worker (`(None, None)` outside a cluster)."""
    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy=None):
    """Whether this worker is the chief: task "chief", or worker 0 of a cluster that has none."""
    task_type, task_id = task(strategy)
    if task_type is None or task_type == "chief":
        return True
    cluster = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver").cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


@contextlib.contextmanager
def write_path(path, strategy=None):
    """Where this worker writes `path`: `path` on the chief, elsewhere a path in a scratch directory removed afterwards.

    Every worker must write (see the module docstring). A non-chief worker's
    scratch directory is `ks.files.temporary_path` of `worker<id>` beside `path`,
    so one left by a killed worker is removed by the next reader of that directory
    (`ks.files.remove_stale_temporaries`).
    """
    path = pathlib.Path(path)
    if is_chief(strategy):
        yield path
        return
    scratch = files.temporary_path(path.with_name(f"worker{task(strategy)[1]}"))
    files.remove(scratch)
    scratch.mkdir(parents=True)
    try:
        yield scratch / path.name
    finally:
        files.remove(scratch)

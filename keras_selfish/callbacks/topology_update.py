"""Base callback for periodic topology updates through the masked-weight protocol."""

import concurrent.futures
import os

import keras
import numpy as np

from keras_selfish.callbacks.checkpoint import finite
from keras_selfish.model_state import optimizer_step
from keras_selfish.sparsity import in_place
from keras_selfish.sparsity.initialize import select
from keras_selfish.sparsity.rewire import read_only
from keras_selfish.sparsity.rewire import rewire
from keras_selfish.sparsity.topology import NonFiniteValues


def check_update_every(update_every):
    if update_every == "epoch" or (isinstance(update_every, int) and not isinstance(update_every, bool) and update_every > 0):
        return update_every
    raise ValueError(f"update_every must be 'epoch' or a positive number of steps, got {update_every!r}.")


def check_end_step(end_step):
    if end_step is None or (isinstance(end_step, int) and end_step > 0):
        return end_step
    raise ValueError(f"end_step must be None (the whole fit) or a positive number of steps, got {end_step!r}.")


class TopologyUpdate(keras.callbacks.Callback):
    """Runs `compute_update` every `update_every` and writes the new masks.

    Timing uses the optimizer's step counter `t = optimizer.iterations`, so it is
    right after resuming from a checkpoint. With `update_every=N` an update runs at
    the first batch end at which `t` has crossed a multiple of N; with
    `steps_per_execution=S` Keras calls batch-end callbacks every S steps, so updates
    then land on the first multiple of S at or after each multiple of N. With
    `update_every="epoch"` it runs at each epoch end, after validation (as the
    authors' code does). No update runs after `end_step`; by default that is the
    last step of the current `fit` call (the step count when it starts plus the
    remaining epochs x steps per epoch, so a resumed run with `initial_epoch` ends
    where the original would have).

    Masks, weights and optimizer slots are rewritten (in their own memory, or by
    assignment; see `rewire`), never rebuilt, so the compiled train step is not
    traced again (with or without `jit_compile`).

    Block masks (`MaskedWeight.block_size > 1`, see `ks.sparsity.initialize`)
    stay whole blocks: every update moves whole blocks. The block sizes are part
    of the callback's state (`get_state`), so a run resumed from a checkpoint keeps
    them even on a model whose masked weights were made afresh (an embedding table
    saved unstructured, as by checkpoints written before tables took blocks along
    their features, stays unstructured); a mask that is not made of whole blocks
    of its block size is refused at train begin.

    Divergence: once a batch or epoch loss in the logs is NaN or infinite (as when
    `StopOnNaN` or `keras.callbacks.TerminateOnNaN` stops training), no update runs
    for the rest of the `fit` call. An update that meets a NaN or infinite active
    weight (or growth score) refuses: it raises a `ValueError`
    (`topology.NonFiniteValues`) naming the matrix and how many values are not
    finite, and writes nothing, so the parameter count stays exact.

    After every update the callback records per-matrix and per-gate statistics in
    `self.history` (one dict per update) and in the logs under `sparsity/...`, so
    they reach `History`, `CSVLogger` and `TensorBoard` when those callbacks come
    after this one in the list. Epoch logs carry the latest update's statistics.
    """

    def __init__(self, update_every="epoch", end_step=None, exclude=(), verbose=1):
        super().__init__()
        self.update_every = check_update_every(update_every)
        self.end_step = check_end_step(end_step)
        self.exclude = exclude
        self.verbose = verbose
        self.history = []
        self._initial_masks = None
        self._saved_block_sizes = None
        self._latest_logs = {}
        self._diverged = False

    # Subclass interface ---------------------------------------------------------

    def prepare(self, step):
        """Work done once per update, before the per-weight rules.

        Returns:
            dict of scalars to log with the update (e.g. the drop rate).
        """
        raise NotImplementedError

    def update_weight(self, index, mw, mask, values, step, info):
        """New topology of one weight (called from worker threads).

        Args:
            index: position of `mw` in `self.weights_`.
            mw: the `MaskedWeight`.
            mask, values: read-only numpy views of its mask and weight.
            step: optimizer steps so far.
            info: what `prepare` returned.

        Returns:
            a `Change` (e.g. `Change.from_positions(mask, dropped, grown)`).
        """
        raise NotImplementedError

    def should_update(self, step):
        """Whether an update due at `step` runs (e.g. not before a begin step)."""
        return True

    def check_model(self):
        """Raise a clear error if the model cannot be updated by this callback."""

    # Resumable state ----------------------------------------------------------

    def get_state(self):
        """History, initial topology, block sizes and last seen step, for checkpoints."""
        weights = getattr(self, "weights_", None)
        return {
            "history": self.history,
            "last_step": getattr(self, "_last_step", 0),
            "block_sizes": [mw.block_size for mw in weights] if weights else self._saved_block_sizes,
            "initial_masks": [np.packbits(m.reshape(-1)) for m in self._initial_masks or []],
            "initial_shapes": [list(m.shape) for m in self._initial_masks or []],
        }

    def set_state(self, state):
        self.history = list(state["history"])
        self._latest_logs = flatten_record(self.history[-1]) if self.history else {}
        self._last_step = state["last_step"]
        self._saved_block_sizes = state.get("block_sizes")  # None in checkpoints written before blocks
        shapes = state["initial_shapes"]
        packed = state.get("initial_masks", [])
        self._initial_masks = [
            np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape) for bits, shape in zip(packed, shapes)
        ] or None

    # Keras hooks ----------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError(
                f"{type(self).__name__} needs a compiled model: its schedule counts "
                f"optimizer steps. Call model.compile(optimizer=..., loss=...) first."
            )
        self.weights_, _ = select(self.model, self.exclude)
        self._check_blocks()
        self.check_model()
        self._end = self.end_step
        if self._initial_masks is None:
            self._initial_masks = [mw.mask.numpy() != 0 for mw in self.weights_]
        self._last_step = self._step()
        self._diverged = False
        for dtype in {mw.variable.dtype for mw in self.weights_}:
            in_place.warm_up(dtype)

    def on_epoch_begin(self, epoch, logs=None):
        if self._end is None:
            self._end = self._step() + self._steps_of_fit(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self._diverged = self._diverged or not finite(logs)
        if self.update_every == "epoch":
            return
        step = self._step()
        due = step // self.update_every > self._last_step // self.update_every
        if due and step <= self._end and self._may_update(step):
            self.update(step)
            if logs is not None:
                logs.update(self._latest_logs)
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        self._diverged = self._diverged or not finite(logs)
        if self.update_every == "epoch":
            step = self._step()
            if 0 < step <= self._end and self._may_update(step):
                self.update(step, epoch=epoch)
        if logs is not None:
            logs.update(self._latest_logs)

    # Internals ------------------------------------------------------------------

    def _step(self):
        return optimizer_step(self.model)

    def _check_blocks(self):
        """Take the block sizes of a restored state, and check that every mask is made of whole blocks."""
        for mw, saved in zip(self.weights_, self._saved_block_sizes or [mw.block_size for mw in self.weights_]):
            if saved != mw.block_size:
                # Checkpoints written before embedding tables took blocks hold them unstructured: kept so.
                unstructured_table = saved == 1 and mw.block_axis == 1
                if mw.block_size != 1 and not unstructured_table:
                    raise ValueError(
                        f"{mw.name} has block_size {mw.block_size}, but the restored state of "
                        f"{type(self).__name__} was trained with block_size {saved}."
                    )
                mw.use_blocks(saved)
            if mw.block_size > 1 and not mw.blocks.is_whole(read_only(mw.mask)):
                raise ValueError(
                    f"The mask of {mw.name} is not made of whole blocks of {mw.block_size} inputs: "
                    f"give masks through ks.sparsity.initialize(..., block_size={mw.block_size})."
                )

    def _may_update(self, step):
        """Whether a due update runs: training has not diverged, and `should_update`."""
        if self._diverged:
            if self.verbose:
                print(f"{type(self).__name__}: step {step}, no update: the loss is not finite.")
            return False
        return self.should_update(step)

    def _steps_of_fit(self, epoch):
        """Optimizer steps left in this `fit` call, from epoch `epoch` on."""
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if not epochs or not steps:
            raise ValueError(
                f"{type(self).__name__} cannot tell how long training runs (the dataset "
                f"has no known length). Pass end_step=<total optimizer steps> to the "
                f"callback, or steps_per_epoch= to fit()."
            )
        return (epochs - epoch) * steps

    def update(self, step, epoch=None):
        """Run one topology update now, as at optimizer step `step`.

        Called by the Keras hooks; callable directly (after `set_model` and
        `on_train_begin`) for benchmarks and custom loops. Returns the update's record.
        """
        weights, optimizer = self.weights_, self.model.optimizer
        info = self.prepare(step)

        def new_topology(index):
            mw = weights[index]
            try:
                return self.update_weight(index, mw, read_only(mw.mask), read_only(mw.variable), step, info)
            except NonFiniteValues as error:
                raise error.of(mw.name) from None

        def write(index, change):
            rewire(weights[index], change, optimizer)
            return _matrix_record(weights[index], change, self._initial_masks[index])

        # Every rule runs before anything is written, so a matrix that refuses
        # leaves the model untouched. One matrix per worker thread, largest first
        # so the workers finish together: the compiled rules and in-place
        # rewrites release the GIL.
        order = sorted(range(len(weights)), key=lambda i: -weights[i].size)
        with concurrent.futures.ThreadPoolExecutor(min(len(weights), os.cpu_count() or 1)) as pool:
            changes = list(pool.map(new_topology, order))
            records = dict(zip(order, pool.map(write, order, changes)))
        records = [records[i] for i in range(len(weights))]
        record = self._record(step, epoch, records, info)
        self.history.append(record)
        self._latest_logs = flatten_record(record)
        if self.verbose:
            dropped = sum(w["dropped"] for w in record["weights"].values())
            print(
                f"{type(self).__name__}: step {step}, "
                + ", ".join(f"{k} {v:.4g}" for k, v in info.items())
                + f", {dropped:,} weights dropped / {record['active']:,} active, "
                f"topology change since start {record['topology_change']:.3f}"
            )
        return record

    def _record(self, step, epoch, matrix_records, info):
        weights = {mw.name: stats for mw, (stats, _, _) in zip(self.weights_, matrix_records)}
        initial = sum(n for _, n, _ in matrix_records)
        still_active = sum(n for _, _, n in matrix_records)
        return {
            "step": step,
            "epoch": epoch,
            **info,
            "active": sum(w["active"] for w in weights.values()),
            "topology_change": 1.0 - still_active / max(initial, 1),
            "weights": weights,
        }


def _matrix_record(mw, change, initial_mask):
    """`(stats, initially active, still active)` of one matrix after an update."""
    mask = change.new_mask.reshape(mw.shape)
    gates = {g: (int(np.count_nonzero(b)), b.size) for g, b in zip(mw.gate_names, mw.split_gates(mask))}
    active = sum(a for a, _ in gates.values())
    stats = {
        "active": active,
        "density": active / mw.size,
        "dropped": change.dropped,
        "grown": change.grown,
        "gates": {g: {"active": a, "density": a / size} for g, (a, size) in gates.items()},
    }
    return stats, int(np.count_nonzero(initial_mask)), _count_both(initial_mask, mask)


def _count_both(a, b, chunk=1 << 20):
    """`count_nonzero(a & b)` for boolean arrays, in chunks (no large temporary)."""
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(int(np.count_nonzero(a[i : i + chunk] & b[i : i + chunk])) for i in range(0, a.size, chunk))


def flatten_record(record):
    """`sparsity/...` scalar log entries of one update record."""
    logs = {f"sparsity/{k}": float(v) for k, v in record.items() if k not in ("weights", "epoch", "step")}
    for name, stats in record["weights"].items():
        for key in ("active", "density", "dropped", "grown"):
            logs[f"sparsity/{name}/{key}"] = float(stats[key])
        if len(stats["gates"]) > 1:
            for gate, gate_stats in stats["gates"].items():
                logs[f"sparsity/{name}/{gate}/active"] = float(gate_stats["active"])
                logs[f"sparsity/{name}/{gate}/density"] = gate_stats["density"]
    return logs

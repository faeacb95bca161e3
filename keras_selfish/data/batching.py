"""Truncated-BPTT batching: consecutive batches continue each other's columns."""

import numpy as np
import tensorflow as tf


def lm_batches(ids, batch_size, seq_len):
    """Language-model batches in truncated-BPTT order, for stateful training.

    The id stream is cut into `batch_size` contiguous columns (the tail that does
    not fill a column is dropped); batch `t` holds positions `[t * seq_len,
    (t + 1) * seq_len)` of every column and its targets are the next tokens. So
    row `b` of batch `t + 1` continues row `b` of batch `t`, and a stateful model
    carries its state across consecutive batches. The last partial window is dropped.

    Args:
        ids: 1-D integer array of token ids.
        batch_size: number of parallel streams (rows).
        seq_len: tokens per row per batch (the BPTT length).

    Returns:
        `tf.data.Dataset` of `(inputs, targets)`, both int32 `(batch_size, seq_len)`.
    """
    if int(batch_size) < 1 or int(seq_len) < 1:
        raise ValueError(f"`batch_size` and `seq_len` must be >= 1, got {batch_size} and {seq_len}.")
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    column = len(ids) // batch_size
    num_batches = (column - 1) // seq_len
    if num_batches < 1:
        raise ValueError(
            f"{len(ids)} tokens are too few for batch_size={batch_size} and seq_len={seq_len}: "
            f"each of the {batch_size} columns needs at least {seq_len + 1} tokens."
        )
    streams = ids[: column * batch_size].reshape(batch_size, column)
    span = num_batches * seq_len

    def windows(offset):
        block = streams[:, offset : offset + span].reshape(batch_size, num_batches, seq_len)
        return np.ascontiguousarray(block.transpose(1, 0, 2))

    return tf.data.Dataset.from_tensor_slices((windows(0), windows(1)))

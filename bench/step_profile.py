"""Profile of one sparse LM train step: each part timed as its own compiled function.

The parts of `bench.throughput`'s sparse step (Embedding -> 2 x SparseLSTM ->
MaskedDense(vocab), the model's loss (ks.losses.SparseSoftmaxCrossEntropy; stock
Keras's beside it), SNT-ASGD before averaging (SGD with global-norm clipping and
the masks, one fused pass per weight); beside it the same update as Keras's SGD
runs it (clipping, update, mask constraints, each alone and all together) and
SNT-ASGD's averaging), each a `tf.function` on the model's own weights and tensors
of the step's shapes, timed round by round in turn with the whole
`train_on_batch` step and a large float32 matmul (this CPU's achieved peak,
measured in the same process so machine drift hits all alike). Reports the median
ms of each part, its FLOPs and GFLOP/s, and the achieved fraction of peak of the
whole step (its FLOPs: the dense matmuls of the LSTM layers and the decoder,
forward and backward; the sparse layers compute with the masked weights as dense
matrices). Beside them, stock Keras's step of the same LM and a lower bound of
the sparse step: its matmul FLOPs at the measured peak plus the parts that are not
matmuls and that every step runs (softmax-CE and the fused update; the LSTM's gate
arithmetic is left out, so the bound is low), as a fraction of stock's step. A
second bound takes each matmul at the rate its shape achieves here instead of the
peak: the decoder's and the LSTM loops' per-time-step matmuls (`(batch, u) @ (u, 4u)`
forward, `(batch, 4u) @ (4u, u)` backward, timed alone in an XLA loop like the
fused LSTM's) as measured, the LSTM's other matmuls (input projections, weight
gradients: large ones) at the peak; what the step takes beyond it is the gate
arithmetic, the loops' writes and per-step overheads, and the embedding.

    python -m bench.throughput --mode=profile                 # widths 200 and 650
"""

import time

import keras
import numpy as np
import tensorflow as tf

from keras_selfish.optimizers.sntasgd import averaged
from keras_selfish.sparsity.masked_weight import mask_of

PEAK_N = 2048  # the peak matmul: (PEAK_N x PEAK_N) @ (PEAK_N x PEAK_N)


def optimizer_step(optimizer, variables, grads):
    """A compiled `optimizer.apply(grads)` (clipping, decay, update, constraints) on `variables`."""
    optimizer.build(variables)

    @tf.function
    def step():
        optimizer.apply(grads, variables)

    return step


RECURRENT_STEP_MATMULS = "  (its per-step matmuls alone)"
# The parts of the sparse step that are not matmuls: the lower bound adds them to the matmuls at peak.
NOT_MATMUL = ("softmax-CE fwd+bwd", "SNT-ASGD apply, all of it (fused)")
# Parts timed for comparison that the sparse step does not run.
NOT_IN_STEP = ("whole step (train_on_batch)", "stock Keras step (train_on_batch)", "peak matmul", "SNT-ASGD averaging", "  (stock Keras loss instead)",
               "global-norm clipping", "SGD apply (no constraint)", "mask constraints", "SGD apply, all of it (Keras)",
               RECURRENT_STEP_MATMULS)
# The bound at achieved rates takes these parts as measured (and the LSTM's remaining matmul FLOPs at peak).
AT_ACHIEVED_RATE = ("decoder fwd (x @ W + b)", "decoder bwd (dW, db, dx)", RECURRENT_STEP_MATMULS) + NOT_MATMUL


def parts(model, batch, averaging_optimizer, spare, stock):
    """name -> (compiled function of no arguments, FLOPs) for every part of one step.

    `spare`: another sparse model of the same shape, whose weights the whole
    optimizer steps update (so the model's own weights stay as they are);
    `stock`: the stock Keras LM of the same shape, its whole step timed beside.
    """
    ids, targets = (tf.constant(a) for a in batch)
    embedding, lstm_0, lstm_1, decoder = [layer for layer in model.layers if layer.weights]
    lstms = [lstm_0, lstm_1]
    batch_size, seq_len = ids.shape
    width, vocab = decoder.kernel.shape
    tokens = batch_size * seq_len
    x = embedding(ids)
    h = lstm_1(lstm_0(x))
    logits = decoder(h)
    dy_h = tf.random.stateless_normal(h.shape, seed=(0, 1))
    dy_logits = tf.random.stateless_normal(logits.shape, seed=(0, 2)) * 1e-4
    variables = model.trainable_variables
    grads = [tf.random.stateless_normal(v.shape, seed=(1, i)) * 1e-3 for i, v in enumerate(variables)]
    emb_index = [i for i, v in enumerate(variables) if v is embedding.embeddings][0]
    emb_grad = tf.IndexedSlices(tf.random.stateless_normal((tokens, width), seed=(2, 0)), tf.reshape(ids, [-1]), tf.shape(embedding.embeddings))
    # Copies, so timing the updates does not move the model's weights.
    copies = [tf.Variable(v) for v in variables]
    masks = [mask_of(v) for v in variables]
    lstm_flops = sum(2 * tokens * int(np.prod(w.shape)) for layer in lstms for w in (layer.cell.kernel, layer.cell.recurrent_kernel))
    decoder_flops = 2 * tokens * width * vocab

    @tf.function
    def embedding_fwd_bwd():
        with tf.GradientTape() as tape:
            y = embedding(ids)
        return tape.gradient(y, embedding.trainable_weights, output_gradients=x)

    @tf.function
    def recurrent_fwd_bwd():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lstm_1(lstm_0(x, training=True), training=True)
        return tape.gradient(y, [x] + [w for layer in lstms for w in layer.trainable_weights], output_gradients=dy_h)

    recurrent_kernels = [layer.cell.recurrent_kernel for layer in lstms]
    step_flops = sum(2 * 2 * tokens * int(np.prod(k.shape)) for k in recurrent_kernels)
    h0 = [tf.random.stateless_normal((batch_size, k.shape[0]), seed=(4, i)) for i, k in enumerate(recurrent_kernels)]
    dz0 = [tf.random.stateless_normal((batch_size, k.shape[1]), seed=(5, i)) for i, k in enumerate(recurrent_kernels)]

    def chain(matmul, start):
        """`seq_len` matmuls in an XLA loop, each one's input made from the previous one's output."""
        return tf.while_loop(lambda t, _: t < seq_len, lambda t, x: (t + 1, matmul(x)), (0, start))[1]

    @tf.function(jit_compile=True, autograph=False)
    def recurrent_step_matmuls():
        """Each layer's per-step matmuls of its fused loops: `h @ U` forward, `dz @ U^T` backward."""
        last = []
        for kernel, h, dz in zip(recurrent_kernels, h0, dz0):
            kernel_t = tf.transpose(kernel)
            last.append(chain(lambda h: tf.matmul(h, kernel)[:, : kernel.shape[0]], h))
            last.append(chain(lambda dz: dz + tf.matmul(dz, kernel_t)[:, :1], dz))
        return last

    @tf.function
    def decoder_fwd():
        return decoder(h)

    h2 = tf.reshape(h, [tokens, width])
    g2 = tf.reshape(dy_logits, [tokens, vocab])

    @tf.function
    def decoder_bwd():
        return (tf.matmul(h2, g2, transpose_a=True), tf.reduce_sum(g2, 0), tf.matmul(g2, decoder.kernel, transpose_b=True))

    def softmax_ce(loss_fn):
        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = loss_fn(targets, logits)
            return loss, tape.gradient(loss, logits)
        return fwd_bwd

    clip_grads = list(grads)
    clip_grads[emb_index] = emb_grad

    clipper = keras.optimizers.SGD(global_clipnorm=0.25)

    @tf.function
    def clipping():
        return clipper._clip_gradients(clip_grads)

    @tf.function
    def optimizer_apply():
        for v, g in zip(copies, grads):
            v.assign_sub(g)

    @tf.function
    def mask_constraints():
        for v, m in zip(copies, masks):
            if m is not None:
                v.assign(v * m)

    accumulators = [(tf.Variable(a), tf.Variable(c)) for a, c in zip(averaging_optimizer._averages, averaging_optimizer._counts)]

    @tf.function
    def sntasgd_averaging():
        for v, (a, c), m in zip(copies, accumulators, masks):
            new_a, new_c = averaged(tf.convert_to_tensor(v), tf.convert_to_tensor(a), tf.convert_to_tensor(c),
                                    None if m is None else tf.cast(m, c.dtype))
            a.assign(new_a)
            c.assign(new_c)

    spare_grads = list(grads)
    spare_grads[emb_index] = emb_grad
    keras_sgd = optimizer_step(keras.optimizers.SGD(1.0, global_clipnorm=0.25), spare.trainable_variables, spare_grads)
    fused_sntasgd = optimizer_step(spare.optimizer, spare.trainable_variables, spare_grads)  # the step's own SNT-ASGD

    p = tf.random.stateless_normal((PEAK_N, PEAK_N), seed=(3, 0))

    @tf.function
    def peak_matmul():
        return tf.matmul(p, p)

    step_batch = batch
    return {
        "whole step (train_on_batch)": (lambda: model.train_on_batch(*step_batch), 3 * (lstm_flops + decoder_flops)),
        "stock Keras step (train_on_batch)": (lambda: stock.train_on_batch(*step_batch), 3 * (lstm_flops + decoder_flops)),
        "embedding fwd+bwd": (embedding_fwd_bwd, 0),
        "recurrent stack fwd+bwd": (recurrent_fwd_bwd, 3 * lstm_flops),
        RECURRENT_STEP_MATMULS: (recurrent_step_matmuls, step_flops),
        "decoder fwd (x @ W + b)": (decoder_fwd, decoder_flops),
        "decoder bwd (dW, db, dx)": (decoder_bwd, 2 * decoder_flops),
        "softmax-CE fwd+bwd": (softmax_ce(model.loss), 0),
        "  (stock Keras loss instead)": (softmax_ce(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), 0),
        "global-norm clipping": (clipping, 0),
        "SGD apply (no constraint)": (optimizer_apply, 0),
        "mask constraints": (mask_constraints, 0),
        "SNT-ASGD averaging": (sntasgd_averaging, 0),
        "SGD apply, all of it (Keras)": (keras_sgd, 0),
        "SNT-ASGD apply, all of it (fused)": (fused_sntasgd, 0),
        "peak matmul": (peak_matmul, 2 * PEAK_N ** 3),
    }


def profile(model, batch, averaging_optimizer, spare, stock, rounds, warmup=3):
    """Median ms, FLOPs and GFLOP/s of every part, timed in turn for `rounds` rounds; the lower bound."""
    fns = parts(model, batch, averaging_optimizer, spare, stock)
    for fn, _ in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, _) in fns.items():
            start = time.perf_counter()
            fn()  # a tf.function on the CPU returns when its work is done
            times[name].append(time.perf_counter() - start)
    result = {}
    for name, (_, flops) in fns.items():
        ms = 1000 * float(np.median(times[name]))
        result[name] = {"ms": round(ms, 3), "gflop": round(flops / 1e9, 3), "gflop_per_s": round(flops / ms / 1e6, 1) if flops else None}
    peak = result["peak matmul"]["gflop_per_s"]
    whole = result["whole step (train_on_batch)"]
    parts_ms = sum(r["ms"] for name, r in result.items() if name not in NOT_IN_STEP)
    stock_ms = result["stock Keras step (train_on_batch)"]["ms"]
    bound_ms = whole["gflop"] / peak * 1000 + sum(result[name]["ms"] for name in NOT_MATMUL)
    other_gflop = whole["gflop"] - sum(result[name]["gflop"] for name in AT_ACHIEVED_RATE)
    achieved_bound_ms = other_gflop / peak * 1000 + sum(result[name]["ms"] for name in AT_ACHIEVED_RATE)
    return {
        "parts": result,
        "peak_gflop_per_s": peak,
        "achieved_fraction_of_peak": round(whole["gflop_per_s"] / peak, 3),
        "sum_of_step_parts_ms": round(parts_ms, 2),
        "decoder_fwd_bwd_at_peak_ms": round(3 * result["decoder fwd (x @ W + b)"]["gflop"] / peak * 1000, 2),
        "step_vs_stock": round(whole["ms"] / stock_ms, 3),
        "lower_bound_ms": round(bound_ms, 2),
        "lower_bound_vs_stock": round(bound_ms / stock_ms, 3),
        "lower_bound_vs_step": round(bound_ms / whole["ms"], 3),
        "achieved_rate_bound_ms": round(achieved_bound_ms, 2),
        "achieved_rate_bound_vs_stock": round(achieved_bound_ms / stock_ms, 3),
        "achieved_rate_bound_vs_step": round(achieved_bound_ms / whole["ms"], 3),
    }


def print_table(width, r):
    print(f"\nsparse LM step at 2x{width}: median ms of each part (compiled alone, interleaved)")
    print(f"{'part':<34} {'ms':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for name, p in r["parts"].items():
        rate = f"{p['gflop_per_s']:>8.1f} {p['gflop_per_s'] / r['peak_gflop_per_s']:>8.2f}" if p["gflop_per_s"] else f"{'':>8} {'':>8}"
        print(f"{name:<34} {p['ms']:>9.2f} {p['gflop']:>7.2f} {rate}")
    print(f"sum of the step's parts: {r['sum_of_step_parts_ms']:.1f} ms; whole step at "
          f"{r['achieved_fraction_of_peak']:.2f} of peak ({r['peak_gflop_per_s']:.0f} GFLOP/s); "
          f"the decoder's fwd+bwd alone at peak: {r['decoder_fwd_bwd_at_peak_ms']:.1f} ms")
    print(f"sparse step / stock step: {r['step_vs_stock']:.3f}; lower bound of the sparse step (matmuls at peak + "
          f"{', '.join(NOT_MATMUL)}): {r['lower_bound_ms']:.1f} ms = {r['lower_bound_vs_stock']:.3f} of stock's step, "
          f"{r['lower_bound_vs_step']:.3f} of the sparse step")
    print(f"bound at the rates these shapes achieve (the decoder's and the loops' per-step matmuls, softmax-CE and the "
          f"update as measured, the other LSTM matmuls at peak): {r['achieved_rate_bound_ms']:.1f} ms = {r['achieved_rate_bound_vs_stock']:.3f} "
          f"of stock's step, {r['achieved_rate_bound_vs_step']:.3f} of the sparse step")

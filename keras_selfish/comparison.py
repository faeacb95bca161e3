"""The paper's comparison: sparse-training methods as settings of one `ks.runs` recipe, and their table.

    settings = ks.comparison.method_settings("rigl", "small_ptb", {"epochs": 8}, seed=1111)
    ks.runs.train(settings, "runs/compare/rigl/seed1111", data_dir=...)
    rows = ks.comparison.summarize({("rigl", 1111): metrics, ...})

Every method trains the preset's model at the preset's density (the dense model:
all weights), with the same budget, seed and schedule; only the settings below
differ. The optimizer is the preset's (SNT-ASGD with its non-monotone trigger)
unless the method names another.
"""

import math
import statistics

# name -> (settings that differ from the preset, description)
METHODS = {
    "dense": ({"sparse": False}, "the dense model of the same width"),
    "static": ({"fix": True}, "static sparse: the initial random topology, never updated"),
    "set": ({"death": "set", "growth": "random"}, "SET: drop the smallest positive and largest negative weights, grow at random"),
    "snfs": (
        {"growth": "momentum", "momentum": 0.9},
        "SNFS (sparse momentum): grow where |momentum| is largest; SNT-ASGD keeps the gradients' momentum buffer "
        "(beta 0.9, SNTASGD(gradient_momentum=0.9)) for this only, its update stays plain SGD",
    ),
    "rigl": ({"growth": "gradient"}, "RigL: grow where |dL/dW| of the dense weight (one batch) is largest"),
    "gmp": ({"sparse": False, "gmp": True}, "gradual magnitude pruning (Zhu & Gupta): dense, pruned to the density from 1/8 to 3/4 of the run"),
    "selfish": ({}, "Selfish-RNN: magnitude drop, random growth, cross-gate redistribution, SNT-ASGD"),
    "selfish_gate_wise": ({"redistribution": "gate_wise"}, "Selfish-RNN with gate-wise redistribution (every gate keeps its count): the ablation"),
    "selfish_sgd": ({"optimizer": "sgd"}, "Selfish-RNN trained with plain SGD instead of SNT-ASGD: the optimizer ablation"),
    "static_sgd": ({"fix": True, "optimizer": "sgd"}, "static sparse with plain SGD"),
    "selfish_block16": ({"block_size": 16}, "Selfish-RNN on whole 1 x 16 blocks of the kernels' inputs and the embedding's features (TFLite's block-sparse kernels)"),
}


def method_settings(method, base):
    """The settings of `method`: `base` (a settings dict, e.g. `ks.runs.settings(...)`) with the method's changes."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {list(METHODS)}.")
    return {**base, **METHODS[method][0]}


def _spread(values):
    """`(mean, half range)` of a list of numbers (half range 0 for one value)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def summarize(results):
    """One table row per method from finished runs.

    Args:
        results: `{(method, seed): metrics}` (`ks.runs.train`'s metrics dicts).
    Returns:
        rows in `METHODS` order: `method`, `seeds`, `valid_ppl`, `test_ppl` (means),
        `valid_ppl_spread`, `test_ppl_spread` (half the range over the seeds), `active_weights`,
        `train_flops` (mean), `train_flops_vs_dense` (None without a dense run), `train_seconds` (mean).
    """
    dense = [m["train_flops"] for (method, _), m in results.items() if method == "dense"]
    rows = []
    for method in METHODS:
        runs = [m for (name, _), m in sorted(results.items()) if name == method]
        if not runs:
            continue
        valid, valid_spread = _spread([m["valid_ppl"] for m in runs])
        test, test_spread = _spread([m["test_ppl"] for m in runs])
        flops = statistics.fmean(m["train_flops"] for m in runs)
        rows.append({
            "method": method,
            "seeds": sorted(seed for (name, seed) in results if name == method),
            "valid_ppl": valid,
            "valid_ppl_spread": valid_spread,
            "test_ppl": test,
            "test_ppl_spread": test_spread,
            "active_weights": round(statistics.fmean(m["active_weights"] for m in runs)),
            "masked_weights": runs[0]["masked_weights"],
            "train_flops": flops,
            "train_flops_vs_dense": flops / dense[0] if dense else None,
            "train_seconds": statistics.fmean(m["train_seconds"] for m in runs),
        })
    return rows


def _with_spread(mean, spread, seeds):
    return f"{mean:.2f}" if len(seeds) < 2 else f"{mean:.2f} ± {spread:.2f}"


def markdown_table(rows):
    """The rows of `summarize` as a markdown table (± is half the range over the seeds)."""
    lines = [
        "| method | seeds | valid ppl | test ppl | active weights | train FLOPs | vs dense | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["train_flops_vs_dense"] is None else f"{r['train_flops_vs_dense']:.3f}x"
        lines.append(
            f"| {r['method']} | {len(r['seeds'])} | {_with_spread(r['valid_ppl'], r['valid_ppl_spread'], r['seeds'])} "
            f"| {_with_spread(r['test_ppl'], r['test_ppl_spread'], r['seeds'])} | {r['active_weights']:,} / {r['masked_weights']:,} "
            f"| {r['train_flops']:.3g} | {ratio} | {_minutes(r['train_seconds'])} |"
        )
    return "\n".join(lines)


def _minutes(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def is_finished(metrics, epochs):
    """Whether a run's metrics (or None) say it trained all `epochs`."""
    return metrics is not None and math.isfinite(metrics.get("test_ppl", math.nan)) and metrics.get("epochs_trained") == epochs

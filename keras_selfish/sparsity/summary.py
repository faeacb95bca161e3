"""Per-matrix and per-gate sparsity statistics."""

import numpy as np

from keras_selfish.sparsity.masked_weight import collect


def weight_stats(mw):
    """Statistics of one `MaskedWeight`.

    Returns:
        dict with `name`, `shape`, `size`, `active`, `density` and `gates`: a list of
        `{"gate", "size", "active", "density"}` per gate block.
    """
    mask = mw.mask.numpy() != 0
    gates = [
        {"gate": g, "size": b.size, "active": int(b.sum()), "density": float(b.sum()) / b.size}
        for g, b in zip(mw.gate_names, mw.split_gates(mask))
    ]
    active = int(mask.sum())
    return {
        "name": mw.name,
        "shape": mw.shape,
        "size": mw.size,
        "active": active,
        "density": active / mw.size,
        "gates": gates,
    }


def format_table(rows):
    """A readable text table of `summary` rows."""
    width = max([len("weight")] + [len(r["name"]) for r in rows])
    header = f"{'weight':<{width}} {'shape':>14} {'active':>11} {'size':>11} {'density':>8}  per-gate density"
    lines = [header, "-" * len(header)]
    for r in rows:
        per_gate = " ".join(f"{g['gate']}={g['density']:.3f}" for g in r["gates"]) if len(r["gates"]) > 1 else ""
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(
            f"{r['name']:<{width}} {shape:>14} {r['active']:>11,} {r['size']:>11,} {r['density']:>8.4f}  {per_gate}"
        )
    active = sum(r["active"] for r in rows)
    size = sum(r["size"] for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}} {'':>14} {active:>11,} {size:>11,} {active / max(size, 1):>8.4f}")
    return "\n".join(lines)


def summary(model, print_fn=print):
    """Active counts and densities of every masked weight, per matrix and per gate.

    Args:
        model: a built Keras model.
        print_fn: called with the formatted table; pass None to print nothing.

    Returns:
        list of dicts, one per masked weight (see `weight_stats`).
    """
    rows = [weight_stats(mw) for mw in collect(model)]
    if print_fn is not None:
        print_fn(format_table(rows))
    return rows


def total_active(model):
    """Total number of active weights over all masked matrices."""
    return int(sum(np.count_nonzero(mw.mask.numpy()) for mw in collect(model)))

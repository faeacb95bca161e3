"""Figures of training runs (matplotlib, PNG): validation curves, the "selfish" gate drift, topology change.

    ks.plots.run_figures(ks.runs.read_history("runs/small_ptb"), "runs/small_ptb/plots")
    ks.plots.validation_curves({"selfish": history_a["epochs"], "static": history_b["epochs"]}, "valid.png")

Inputs are what `ks.runs.train` writes to `<model_dir>/history.json`: `epochs`, one
record per epoch (`epoch`, `val_ppl`, ...), and `topology`, one record per topology
update (`step`, `drop_rate`, `topology_change`, `weights`: per matrix its `density`
and per-gate `gates: {gate: {"density"}}`).
"""

import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from keras_selfish.files import atomic_write  # noqa: E402

DPI = 120


def _save(figure, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=DPI))
    plt.close(figure)
    return path


def validation_curves(runs, path, title="Validation perplexity per epoch"):
    """One line per run: validation perplexity (log scale) against the epoch.

    Args:
        runs: `{label: epoch records}` (records with `epoch` and `val_ppl`).
        path: the PNG to write.
    Returns:
        `path`.
    """
    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10").colors
    for index, (label, epochs) in enumerate(runs.items()):
        points = [(e["epoch"], e["val_ppl"]) for e in epochs if "val_ppl" in e and math.isfinite(e["val_ppl"])]
        if points:  # ten colours, then the same colours dashed
            style = ("-", "--", ":")[index // len(colors) % 3]
            axes.plot(*zip(*points), style, color=colors[index % len(colors)], marker="o", markersize=3, label=label)
    axes.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 200, not 2 x 10^2
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation perplexity (log scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    return _save(figure, path)


def gated_matrices(topology):
    """Names of the matrices with more than one gate in the update records, in record order."""
    return [name for name, stats in topology[0]["weights"].items() if len(stats["gates"]) > 1] if topology else []


def gate_drift(topology, path, initial=None):
    """Per-gate density of every gated (LSTM/GRU) matrix across the topology updates.

    The "selfish" drift: under cross-gate redistribution the gates of one matrix
    compete for its fixed count, so their densities part from the matrix's.

    Args:
        topology: update records (`history["topology"]`), at least one.
        path: the PNG to write.
        initial: the topology at step 0 as a record (`{"step": 0, "weights": ...}`,
            e.g. `ks.runs.topology_record(ks.sparsity.summary(model))`), or None.
    Returns:
        `path`, or None when no matrix has gates.
    """
    names = gated_matrices(topology)
    if not names:
        return None
    columns = min(2, len(names))
    rows = math.ceil(len(names) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False, sharex=True)
    records = ([initial] if initial is not None else []) + list(topology)
    steps = [r["step"] for r in records]
    for axes, name in zip(grid.flat, names):
        for gate in topology[0]["weights"][name]["gates"]:
            axes.plot(steps, [r["weights"][name]["gates"][gate]["density"] for r in records], marker="o", markersize=3, label=f"{gate} gate")
        axes.set_title(name, fontsize="small")
        axes.set_ylabel("active fraction of the gate")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="x-small")
    for axes in grid[-1]:
        axes.set_xlabel("optimizer step")
    for axes in list(grid.flat)[len(names):]:
        axes.set_visible(False)
    figure.suptitle("Per-gate density across topology updates")
    return _save(figure, path)


def topology_dynamics(topology, path):
    """Drop rate and topology change since the start (fraction of the initial active weights now inactive) per update.

    Returns:
        `path`, or None without updates.
    """
    if not topology:
        return None
    steps = [r["step"] for r in topology]
    figure, (rate, change) = plt.subplots(1, 2, figsize=(10, 3.6))
    if "drop_rate" in topology[0]:
        rate.plot(steps, [r["drop_rate"] for r in topology], marker="o", markersize=3)
        rate.set_ylabel("drop rate p_t (fraction of active weights)")
        rate.set_title("Drop rate per update")
    else:  # gradual magnitude pruning
        rate.plot(steps, [r["target_sparsity"] for r in topology], marker="o", markersize=3)
        rate.set_ylabel("target sparsity")
        rate.set_title("Pruning schedule")
    change.plot(steps, [r["topology_change"] for r in topology], marker="o", markersize=3, color="tab:red")
    change.set_ylabel("initial active weights now inactive")
    change.set_title("Topology change since the start")
    for axes in (rate, change):
        axes.set_xlabel("optimizer step")
        axes.grid(True, alpha=0.3)
    return _save(figure, path)


def run_figures(history, directory, label="this run"):
    """The figures of one run into `directory`: validation.png, gate_density.png, topology.png.

    Args:
        history: `{"epochs": [...], "topology": [...], "initial": record or None}`
            (`<model_dir>/history.json`).
        directory: where to write them.
        label: the validation curve's legend.
    Returns:
        the paths written (figures without data are skipped).
    """
    directory = pathlib.Path(directory)
    written = [validation_curves({label: history["epochs"]}, directory / "validation.png")]
    written.append(gate_drift(history["topology"], directory / "gate_density.png", history.get("initial")))
    written.append(topology_dynamics(history["topology"], directory / "topology.png"))
    return [p for p in written if p is not None]

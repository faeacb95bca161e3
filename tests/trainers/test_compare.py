"""The comparison binary end to end at a smoke budget: every method runs, the table and figures, resume after SIGKILL."""

import json
import signal
import subprocess
import time

import keras_selfish as ks
from tests.conftest import run_here
from tests.conftest import run_process
from tests.conftest import start_process

PNG = b"\x89PNG\r\n\x1a\n"
SMOKE = ["--preset=tiny_ptb", "--epochs=2", "--steps_per_epoch=4", "--emsize=8", "--nhid=8", "--batch_size=4", "--bptt=5",
         "--nonmono=1", "--checkpoint_every=2"]


def test_every_method_runs_writes_the_table_and_figures_and_a_killed_comparison_resumes(made_up_corpus, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    methods = list(ks.comparison.METHODS)
    flags = [f"--data_dir={made_up_corpus}", f"--tfds_dir={tmp_path / 'tfds'}", f"--output={out}", f"--results={results}",
             f"--methods={','.join(methods)}", "--seeds=1", *SMOKE]
    process = start_process("trainers.compare", *flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / methods[1] / "seed1" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not second.is_file():  # the first run finished, the second is under way
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert second.is_file() and (out / methods[0] / "seed1" / "metrics.json").is_file()
    assert not (out / methods[1] / "seed1" / "metrics.json").is_file()

    result = run_process("trainers.compare", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{methods[0]} (seed 1): finished earlier, skipped" in result.stdout
    assert f"resuming from {out / methods[1] / 'seed1' / 'checkpoints'}" in result.stdout
    rows = {r["method"]: r for r in json.loads((results / "results.json").read_text())["rows"]}
    assert list(rows) == methods
    table = (results / "results.md").read_text()
    assert all(f"| {m} | 1 |" in table for m in methods)
    for name in ("validation.png", "gate_density_selfish.png", "topology_selfish.png", "gate_density_selfish_gate_wise.png"):
        assert (results / name).read_bytes()[:8] == PNG, name
    assert (out / "selfish" / "seed1" / "plots" / "gate_density.png").read_bytes()[:8] == PNG  # train_lm's own figures

    # The same budget for every method; exact counts: every sparse method keeps the same active count.
    metrics = {m: json.loads((out / m / "seed1" / "metrics.json").read_text()) for m in methods}
    assert {m["optimizer_steps"] for m in metrics.values()} == {8}
    size = metrics["dense"]["masked_weights"]
    assert metrics["dense"]["active_weights"] == size
    sparse = {m: metrics[m]["active_weights"] for m in methods if m not in ("dense", "gmp", "selfish_block16")}  # blocks: counted in blocks
    assert len(set(sparse.values())) == 1 and abs(next(iter(sparse.values())) / size - 0.33) < 0.01, sparse
    assert metrics["gmp"]["active_weights"] == sparse["selfish"]  # pruned to round(density * size) per matrix
    assert rows["dense"]["train_flops_vs_dense"] == 1.0 and rows["static"]["train_flops_vs_dense"] < 0.34
    assert 0.33 < rows["gmp"]["train_flops_vs_dense"] < 1.0  # dense at first, then pruned
    settings = {m: json.loads((out / m / "seed1" / "config.json").read_text()) for m in methods}
    assert settings["snfs"]["growth"] == "momentum" and settings["rigl"]["growth"] == "gradient" and settings["set"]["death"] == "set"
    assert settings["selfish_sgd"]["optimizer"] == "sgd" and settings["selfish_gate_wise"]["redistribution"] == "gate_wise"
    assert settings["static"]["fix"] and settings["gmp"]["gmp"] and not settings["dense"]["sparse"]
    assert settings["selfish_block16"]["block_size"] == 16 and metrics["selfish_block16"]["topology_updates"] == 2
    assert metrics["snfs"]["topology_updates"] == 2 and metrics["static"]["topology_updates"] == 0
    # The runs share one process; their records name the weights alike (not language_model_1/..., _2/...).
    histories = {m: ks.runs.read_history(out / m / "seed1") for m in methods}
    names = {m: set(h["initial"]["weights"]) for m, h in histories.items()}
    assert all(n == names["dense"] for n in names.values()) and all(w.startswith("language_model/") for w in names["dense"])
    assert all(set(r["weights"]) == names["dense"] for h in histories.values() for r in h["topology"])


def test_unknown_method_is_refused_in_one_line(tmp_path):
    result = run_here("trainers.compare", "--methods=selfish,magic", f"--output={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("compare: error: unknown methods ['magic']")

"""The training binary end to end: outputs, perplexity, resume after SIGKILL, clear errors."""

import json
import math
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import run_here
from tests.conftest import run_process
from tests.conftest import start_process

TINY = ["--emsize=32", "--nhid=32", "--batch_size=8", "--bptt=10", "--log_every=5", "--nonmono=1"]


def test_trains_writes_outputs_and_perplexity_falls(ptb_slice, tmp_path):
    out = tmp_path / "run"
    flags = [f"--data_dir={ptb_slice}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--epochs=2", "--steps_per_epoch=20", "--checkpoint_every=5", *TINY]
    result = run_process("trainers.train_lm", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 40 and metrics["topology_updates"] == 2
    # An untrained model is near-uniform over the slice's vocabulary (thousands of words).
    assert metrics["valid_ppl"] < 1000 and metrics["test_ppl"] < 1000
    assert "| end of epoch 2 |" in result.stdout and "DropAndGrow: step 40" in result.stdout
    assert (out / "checkpoints" / "latest").is_file() and (out / "best.weights.h5").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    evaluated = run_process("trainers.evaluate", f"--model_dir={out}", f"--data_dir={ptb_slice}", f"--tfds_dir={tmp_path / 'tfds'}", "--bptt=10")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    ppl = float(re.search(r"test perplexity ([0-9.]+)", evaluated.stdout).group(1))
    assert math.isclose(ppl, metrics["test_ppl"], rel_tol=1e-3)


def test_same_seed_gives_the_same_run_on_a_cold_or_a_warm_data_cache(made_up_corpus, tmp_path):
    # Preparing the corpus (cold cache) draws from the global random generators.
    flags = [f"--data_dir={made_up_corpus}", f"--tfds_dir={tmp_path / 'tfds'}", "--epochs=1", "--steps_per_epoch=4", "--batch_size=4",
             "--bptt=5", "--emsize=8", "--nhid=8", "--dropout=0.3"]
    metrics = []
    for name in ("cold", "warm"):
        result = run_process("trainers.train_lm", *flags, f"--model_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert metrics[0]["valid_ppl"] == metrics[1]["valid_ppl"] and metrics[0]["test_ppl"] == metrics[1]["test_ppl"]


def test_xla_compiled_train_step_trains_and_may_be_switched_on_a_rerun(made_up_corpus, tmp_path):
    out = tmp_path / "run"
    flags = [f"--data_dir={made_up_corpus}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--steps_per_epoch=3", "--batch_size=4",
             "--bptt=5", "--emsize=8", "--nhid=8", "--update_frequency=2"]
    first = run_process("trainers.train_lm", *flags, "--epochs=1", "--jit_compile=true")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train step: XLA-compiled (--jit_compile=true)" in first.stdout
    again = run_process("trainers.train_lm", *flags, "--epochs=2", "--jit_compile=false")  # an execution setting, not the run's recipe
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train step: not XLA-compiled (--jit_compile=false)" in again.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 6 and math.isfinite(metrics["test_ppl"])


def test_mirrored_run_resumes_on_one_device(made_up_corpus, tmp_path):
    out = tmp_path / "run"
    flags = [f"--data_dir={made_up_corpus}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--steps_per_epoch=3", "--batch_size=4",
             "--bptt=5", "--emsize=8", "--nhid=8", "--update_frequency=2"]
    first = run_process("trainers.train_lm", *flags, "--epochs=1", "--distribution=mirrored")  # this machine's one CPU: one replica
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_process("trainers.train_lm", *flags, "--epochs=2", "--distribution=none")  # an execution setting, not the run's recipe
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == {"epoch": 1, "batch": 0, "step": 3} and math.isfinite(metrics["test_ppl"])


def test_resumes_after_sigkill_mid_epoch_and_finishes_with_exact_step_count(ptb_slice, tmp_path):
    out = tmp_path / "run"
    flags = [f"--data_dir={ptb_slice}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--epochs=2", "--steps_per_epoch=40", "--checkpoint_every=5", *TINY]
    process = start_process("trainers.train_lm", *flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline:
        if latest.is_file() and re.search(r"-0-(1[0-9]|[2-9][0-9])$", latest.read_text()):
            break  # a mid-epoch checkpoint of the first epoch, batch >= 10
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step, epoch, batch = (int(v) for v in re.match(r"ckpt-(\d+)-(\d+)-(\d+)", latest.read_text()).groups())
    assert epoch == 0 and 0 < batch < 40

    result = run_process("trainers.train_lm", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints'}: epoch 1, batch {batch}, step {step}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == {"epoch": 0, "batch": batch, "step": step}
    assert metrics["optimizer_steps"] == 80  # every batch trained exactly once across the two processes
    assert metrics["topology_updates"] == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset=huge"], "Unknown preset 'huge'"),
        (["--corpus=ptb3"], "Unknown corpus 'ptb3'"),
        (["--data_dir=/nonexistent/data"], "/nonexistent/data/ptb does not hold train.txt"),
        (["--density=0"], r"--density must be in \(0, 1\]"),
        (["--bptt=0"], "--bptt must be >= 1"),
        (["--model=lstm", "--tied", "--emsize=10", "--nhid=20"], "tied weights need emsize == nhid"),
        (["--distribution=multi_worker"], "reads the cluster from TF_CONFIG, which is not set"),
    ],
)
def test_bad_flags_exit_with_one_clear_line(flags, message, tmp_path, made_up_corpus):
    result = run_here("trainers.train_lm", f"--model_dir={tmp_path}", f"--tfds_dir={tmp_path / 'tfds'}", f"--data_dir={made_up_corpus}", *flags)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train_lm: error:") and re.search(message, last), last


def test_bad_split_file_exits_with_one_line_naming_it(tmp_path, made_up_corpus):
    data = tmp_path / "data"
    (data / "ptb").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / "ptb" / f"{split}.txt").write_bytes((made_up_corpus / "ptb" / f"{split}.txt").read_bytes())
    (data / "ptb" / "valid.txt").write_bytes(b"caf\xe9\n")
    result = run_here("trainers.train_lm", f"--model_dir={tmp_path / 'run'}", f"--tfds_dir={tmp_path / 'tfds'}", f"--data_dir={data}")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_lm: error: {data / 'ptb' / 'valid.txt'} is not UTF-8 text"), last


def test_rerun_on_another_corpus_stops_with_one_line_and_writes_nothing(tmp_path, made_up_corpus):
    out = tmp_path / "run"
    flags = [f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--epochs=1", "--steps_per_epoch=2", "--batch_size=4", "--bptt=5",
             "--emsize=8", "--nhid=8"]
    assert run_here("trainers.train_lm", f"--data_dir={made_up_corpus}", *flags).returncode == 0
    before = snapshot(out)
    other = tmp_path / "other"  # --data_dir may change on a re-run, but not what it holds
    other.mkdir()
    line = " ".join(f"v{i}" for i in range(20))
    for split in ("train", "valid", "test"):
        (other / f"{split}.txt").write_text(f"{line}\n" * 100, encoding="utf-8")
    result = run_here("trainers.train_lm", f"--data_dir={other}", *flags, "--epochs=2")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_lm: error: the ptb corpus at {other} is not the one {out} was trained on"), last
    assert snapshot(out) == before


def test_model_dir_with_checkpoints_but_no_config_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    result = run_here("trainers.train_lm", f"--model_dir={tmp_path / 'run'}", f"--tfds_dir={tmp_path / 'tfds'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        f"train_lm: error: {tmp_path / 'run'} holds checkpoints but no config.json, so its settings are unknown; "
        f"start a new run: another --model_dir, or delete {tmp_path / 'run'}."
    )


def snapshot(directory):
    """Every file under `directory`: its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(ptb_slice, tmp_path_factory):
    """A finished one-epoch run and the flags that made it."""
    root = tmp_path_factory.mktemp("finished")
    flags = [f"--data_dir={ptb_slice}", f"--tfds_dir={root / 'tfds'}", f"--model_dir={root / 'run'}", "--epochs=1", "--steps_per_epoch=3", *TINY]
    result = run_here("trainers.train_lm", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", flags


@pytest.mark.parametrize(
    "changed, named",
    [
        (["--density=0.5"], ["--density=0.33 in the run, 0.5 now"]),
        (["--lr=1.0"], ["--lr=20.0 in the run, 1.0 now"]),
        (["--nhid=48"], ["--nhid=32 in the run, 48 now"]),
        (["--lr=1.0", "--density=0.5", "--epochs=4"], ["--density=0.33 in the run, 0.5 now", "--lr=20.0 in the run, 1.0 now"]),
    ],
)
def test_rerun_with_other_settings_stops_with_one_line_and_writes_nothing(finished_run, changed, named):
    out, flags = finished_run
    before = snapshot(out)
    result = run_here("trainers.train_lm", *flags, *changed)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]  # (lines before it are TensorFlow's start-up logs)
    assert line.startswith(f"train_lm: error: {out} holds a run with other settings"), line
    for change in named:
        assert change in line, line
    assert "--epochs" not in line.split("(only")[0]  # --epochs may change: not reported as a difference
    assert "another --model_dir, or delete" in line
    assert snapshot(out) == before  # config.json and every other file untouched


def test_rerun_with_same_flags_reports_and_with_more_epochs_extends(ptb_slice, tmp_path):
    out = tmp_path / "run"
    flags = [f"--data_dir={ptb_slice}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--epochs=1", "--steps_per_epoch=4", "--checkpoint_every=2", *TINY]
    assert run_here("trainers.train_lm", *flags).returncode == 0
    config = (out / "config.json").read_bytes()
    again = run_here("trainers.train_lm", *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints'}: epoch 2, batch 0, step 4" in again.stdout
    assert json.loads((out / "metrics.json").read_text())["optimizer_steps"] == 4

    # --epochs may grow (and --checkpoint_every/--log_every change): the run trains on.
    longer = run_here("trainers.train_lm", *flags, "--epochs=2", "--checkpoint_every=3", "--log_every=1")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "| end of epoch 2 |" in longer.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 8
    # The drop-rate cosine keeps the run's horizon (1 epoch x 4 steps): no update after step 4.
    assert metrics["topology_updates"] == 1 and "DropAndGrow: step 8" not in longer.stdout
    assert (out / "config.json").read_bytes() == config  # written once, at creation


@pytest.mark.parametrize("checkpoint_every", [2, 0], ids=["after_a_checkpoint", "before_any_checkpoint"])
def test_nan_loss_stop_names_what_is_kept(ptb_slice, tmp_path, checkpoint_every):
    out = tmp_path / "run"
    flags = [f"--data_dir={ptb_slice}", f"--tfds_dir={tmp_path / 'tfds'}", f"--model_dir={out}", "--epochs=1", "--steps_per_epoch=6",
             f"--checkpoint_every={checkpoint_every}", "--lr=1e30", "--clip=0", *TINY]
    result = run_here("trainers.train_lm", *flags)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    bad = int(re.match(r"train_lm: error: the training loss became NaN/Inf at step (\d+); stopped, ", line).group(1))
    if checkpoint_every:
        kept = re.search(rf"kept: the checkpoint of step (\d+) \(epoch 1, batch (\d+)\) in {re.escape(str(out / 'checkpoints'))}\.", line)
        step = int(kept.group(1))
        assert 0 < step < bad and int(kept.group(2)) == step
    else:
        assert "no checkpoint was written before it, so there is nothing to resume from" in line
        assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert f"start a new run: another --model_dir, or delete {out}." in line

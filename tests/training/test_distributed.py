"""ks.runs.train under tf.distribute: two replicas and two loopback workers train the one-device run.

Each run is `tests.training.distributed_lm` in its own processes (a 2 x 8 Selfish
LSTM, drop-and-grow every 2 steps, SNT-ASGD with gradient clipping, no dropout),
which checks after every batch that replicas agree and counts hold.
"""

import json
import socket
import subprocess

import numpy as np
import pytest

from tests.conftest import start_process

TIMEOUT = 240  # seconds for one process; a hung collective is killed


def write_corpus(root):
    """A `ptb` directory of a repeating 12-word text with a few variations."""
    rng = np.random.default_rng(0)
    (root / "ptb").mkdir(parents=True)
    for split, lines in (("train", 40), ("valid", 10), ("test", 10)):
        words = lambda i: " ".join(f"w{(i + j) % 12}" if rng.random() > 0.2 else f"w{rng.integers(12, 20)}" for j in range(8))  # noqa: E731
        (root / "ptb" / f"{split}.txt").write_text("\n".join(words(i) for i in range(lines)) + "\n", encoding="utf-8")
    return root


def start(out, model_dir, data_dir, *flags, tf_config=None):
    return start_process("tests.training.distributed_lm", f"--model_dir={model_dir}", f"--data_dir={data_dir}", f"--out={out}", *flags,
                         tf_config=tf_config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(processes):
    """Wait for all `processes` (at most TIMEOUT s); kill all of them if one fails or hangs. Returns (codes, outputs)."""
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [p.returncode for p in processes], outputs


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def one_device(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("one_device")
    (code,), (output,) = finish([start(root / "run.npz", root / "run", corpus)])
    assert code == 0, output[-3000:]
    return np.load(root / "run.npz")


def assert_same_run(result, reference):
    """Same masks after every update, the same losses and final weights and slots within float tolerance."""
    np.testing.assert_array_equal(result["masks"], reference["masks"][-len(result["masks"]) :])
    np.testing.assert_array_equal(result["counts"], reference["counts"])
    # Logged losses are running means of a fit call: a run resumed mid-epoch matches from the next epoch (the last 5 batches).
    last = len(reference["losses"]) if len(result["losses"]) == len(reference["losses"]) else 5
    np.testing.assert_allclose(result["losses"][-last:], reference["losses"][-last:], rtol=1e-5)
    for key in (k for k in reference.files if k.isdigit()):
        np.testing.assert_allclose(result[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=f"array {key}")


def test_two_mirrored_replicas_train_the_one_device_run(one_device, corpus, tmp_path):
    (code,), (output,) = finish([start(tmp_path / "run.npz", tmp_path / "run", corpus, "--distribution=mirrored", "--replicas=2")])
    assert code == 0, output[-3000:]
    assert "10 batches checked, replicas agree" in output and "2 replicas of 2 streams" in output
    assert_same_run(np.load(tmp_path / "run.npz"), one_device)


def test_two_loopback_workers_killed_and_resumed_train_the_one_worker_run(one_device, corpus, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    model_dir = tmp_path / "run"

    def workers(*flags):
        return [
            start(tmp_path / f"worker{i}.npz", model_dir, corpus, "--distribution=multi_worker", *flags,
                  tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(2)
        ]

    # Both killed (SIGKILL) at step 4, after the chief's checkpoint of step 3.
    codes, outputs = finish(workers("--kill_at=4"))
    assert codes == [-9, -9], outputs[0][-3000:]
    assert (model_dir / "checkpoints" / "ckpt-000000003-0-3").is_dir()
    codes, outputs = finish(workers())
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("resuming from" in o and "7 batches checked, replicas agree" in o for o in outputs), outputs[0][-2000:]

    chief, other = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    for key in chief.files:  # identical masks, weights and slots after every batch, and at the end
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    assert_same_run(chief, one_device)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["resumed_from"]["step"] == 3 and metrics["topology_updates"] == 5
    assert metrics["active_weights"] == int(one_device["counts"].sum())
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []  # no worker scratch left

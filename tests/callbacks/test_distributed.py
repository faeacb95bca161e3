"""Topology updates under tf.distribute: mirrored variables are rewritten on every replica."""

from tests.conftest import run_process


def test_selfish_rnn_under_mirrored_strategy():
    result = run_process("tests.callbacks.mirrored_training")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 updates, 12 checks" in result.stdout and "replicas agree" in result.stdout

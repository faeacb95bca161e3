"""Topology updates under tf.distribute: mirrored variables are rewritten on every replica."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_selfish_rnn_under_mirrored_strategy():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.callbacks.mirrored_training"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 updates, 12 checks" in result.stdout and "replicas agree" in result.stdout

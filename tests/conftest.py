"""Shared test setup: quiet TensorFlow, fixed seeds, the default data directory, binaries run in-process."""

import atexit
import contextlib
import io
import json
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# numba's on-disk cache of the compiled topology kernels: fresh for every test session (pytest-xdist's workers
# and the binaries the tests start inherit it), so edited kernels are never served from a stale cache.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="ks-numba-cache-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)

import absl.flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = pathlib.Path(os.environ.get("KS_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    # Without a full garbage collection (free_memory=True): it took ~0.65 s after every test, a fifth of the
    # suite's time; Python's own collector still frees the models' cycles as they accumulate.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_here(module, *flags):
    """`python -m <module> *flags` run in this process: a `subprocess.CompletedProcess`.

    It saves a fresh interpreter's start-up (importing TensorFlow, ~8 s a run). The
    module runs as `__main__` (its `app.run`), stdout and stderr are captured, an
    exit message is written to stderr with code 1 as Python does, an uncaught
    exception's traceback too; the binary's absl flags are removed afterwards, so
    the same or another binary may run next. `TF_CONFIG` is unset while it runs.
    Runs that are killed, or whose test is about what a fresh process does
    (distribution strategies, the data cache, XLA switched on a re-run, the binary
    end to end), start a real process (`run_process`, `start_process`).
    """
    out, err = io.StringIO(), io.StringIO()
    defined = set(absl.flags.FLAGS)
    code = 0
    with mock.patch.object(sys, "argv", [module, *flags]), mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.pop("TF_CONFIG", None)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else e.code or 0
        except Exception:  # noqa: BLE001 - reported as the interpreter would
            traceback.print_exc()
            code = 1
        finally:
            for name in set(absl.flags.FLAGS) - defined:
                delattr(absl.flags.FLAGS, name)
    return subprocess.CompletedProcess([module, *flags], code, out.getvalue(), err.getvalue())


def start_process(module, *flags, tf_config=None, **popen):
    """`python -m <module> *flags` started in a fresh interpreter from the repository root: a `subprocess.Popen`.

    TensorFlow's C++ logging is quiet; `TF_CONFIG` is `tf_config` as JSON, or unset.
    `popen`: more `subprocess.Popen` arguments (stdout, stderr, text, ...).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-m", module, *flags], cwd=REPO, env=env, **popen)


def run_process(module, *flags, timeout=600):
    """`start_process(module, *flags)` run to its end (killed after `timeout` s): a `subprocess.CompletedProcess`
    with its stdout and stderr."""
    with start_process(module, *flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)

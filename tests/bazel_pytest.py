"""Entry point of the Bazel py_test targets: run pytest over the directories given."""

import os
import sys

import pytest

if __name__ == "__main__":
    workspace = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(workspace)
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))

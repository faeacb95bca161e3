"""Fixtures of the binaries' tests: small corpora."""

import pytest

from tests.conftest import DEFAULT_DATA_DIR


@pytest.fixture(scope="module")
def ptb_slice(tmp_path_factory):
    """The first lines of every PTB split: a corpus that trains and evaluates in seconds.

    Tests that take it are skipped when PTB is absent; the others need no data.
    """
    if not all((DEFAULT_DATA_DIR / "ptb" / f"{split}.txt").is_file() for split in ("train", "valid", "test")):
        pytest.skip(f"PTB not available in {DEFAULT_DATA_DIR / 'ptb'}")
    root = tmp_path_factory.mktemp("data")
    (root / "ptb").mkdir()
    for split, lines in (("train", 3000), ("valid", 300), ("test", 300)):
        text = (DEFAULT_DATA_DIR / "ptb" / f"{split}.txt").read_text(encoding="utf-8").split("\n")
        (root / "ptb" / f"{split}.txt").write_text("\n".join(text[:lines]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def made_up_corpus(tmp_path_factory):
    """A generated `ptb` directory, every split large enough for the default batch size and BPTT length
    (20 x 35 + 1 tokens); the validation and test splits no larger, as the runs evaluate them every epoch."""
    root = tmp_path_factory.mktemp("made_up")
    (root / "ptb").mkdir()
    line = " ".join(f"w{i}" for i in range(20))
    for split, lines in (("train", 100), ("valid", 40), ("test", 40)):
        (root / "ptb" / f"{split}.txt").write_text(f"{line}\n" * lines, encoding="utf-8")
    return root

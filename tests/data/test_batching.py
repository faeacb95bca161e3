"""Truncated-BPTT batching and corpus reading."""

import numpy as np
import pytest

import keras_selfish as ks
from tests.conftest import DEFAULT_DATA_DIR


def test_consecutive_batches_continue_each_row():
    ids = np.arange(1000)
    batches = [(x.numpy(), y.numpy()) for x, y in ks.data.lm_batches(ids, batch_size=4, seq_len=7)]
    column = 1000 // 4
    assert len(batches) == (column - 1) // 7
    for t, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (4, 7)
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(x[:, 0], np.arange(4) * column + t * 7)
        if t:
            np.testing.assert_array_equal(x[:, 0], batches[t - 1][0][:, -1] + 1)


def test_too_few_tokens_and_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="too few"):
        ks.data.lm_batches(np.arange(10), batch_size=4, seq_len=5)
    with pytest.raises(ValueError, match="seq_len"):
        ks.data.lm_batches(np.arange(100), batch_size=4, seq_len=0)


def test_reading_a_corpus_file_adds_eos_per_line(tmp_path):
    (tmp_path / "train.txt").write_text(" a b \n c a\n")
    tokens = ks.data.read_tokens(tmp_path / "train.txt")
    assert tokens == ["a", "b", "<eos>", "c", "a", "<eos>"]
    vocab = ks.data.Vocabulary(tokens)
    np.testing.assert_array_equal(vocab.encode(["c", "<eos>"]), [3, 2])
    with pytest.raises(KeyError, match="'zzz'"):
        vocab.encode(["zzz"])
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        ks.data.read_tokens(tmp_path / "missing.txt")


PTB_SPLITS = ("train", "valid", "test")


@pytest.mark.skipif(not all((DEFAULT_DATA_DIR / "ptb" / f"{s}.txt").is_file() for s in PTB_SPLITS), reason="PTB not present")
def test_ptb_token_counts_match_the_data_readme():
    tokens = {s: ks.data.read_tokens(DEFAULT_DATA_DIR / "ptb" / f"{s}.txt") for s in PTB_SPLITS}
    assert {s: len(t) for s, t in tokens.items()} == {"train": 929589, "valid": 73760, "test": 82430}
    assert len(ks.data.Vocabulary(tokens["train"])) == 10000

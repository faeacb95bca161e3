"""The TFDS corpus builders: offline preparation, file order, token counts, vocabulary."""

import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.data import corpora
from tests.conftest import DEFAULT_DATA_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "ptb" / "train.txt").is_file(), reason="PTB not available")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_ptb_token_counts_and_vocabulary_match_the_data_readme(tfds_dir):
    corpus = ks.data.load_corpus("ptb", DEFAULT_DATA_DIR, tfds_dir=tfds_dir)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert len(corpus.vocabulary) == 10_000
    first_line = (DEFAULT_DATA_DIR / "ptb" / "train.txt").read_text().split("\n")[0].split() + ["<eos>"]
    np.testing.assert_array_equal(corpus.train[: len(first_line)], corpus.vocabulary.encode(first_line))


def test_builder_keeps_every_split_in_file_order(tfds_dir):
    builder = ks.data.corpus_builder("ptb", DEFAULT_DATA_DIR, tfds_dir=tfds_dir)
    assert builder.info.disable_shuffling
    for split in corpora.SPLITS:
        lines = (DEFAULT_DATA_DIR / "ptb" / f"{split}.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert corpora.split_lines(builder, split) == lines


def test_missing_data_and_unknown_corpus_are_reported(tmp_path, tfds_dir):
    with pytest.raises(FileNotFoundError, match="does not hold train.txt"):
        ks.data.load_corpus("ptb", tmp_path, tfds_dir=tfds_dir)
    with pytest.raises(ValueError, match="Unknown corpus 'ptb3'"):
        ks.data.load_corpus("ptb3", DEFAULT_DATA_DIR)

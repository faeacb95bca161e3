"""The TFDS corpus builders: offline preparation, file order, token counts, vocabulary,
prepared data tied to its source files, and unreadable split files reported by name.

Synthetic corpora run everywhere; only the PTB-count tests need the real data.
"""

import re

import numpy as np
import pytest

import keras_selfish as ks
from keras_selfish.data import corpora
from tests.conftest import DEFAULT_DATA_DIR

needs_ptb = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "ptb" / "train.txt").is_file(), reason="PTB not available")

SPLIT_TEXT = {
    "train": "the cat sat\non the mat\n",
    "valid": "the mat sat\n",
    "test": "on the cat\n",
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def write_corpus(folder, **overrides):
    """Write the three split files (`SPLIT_TEXT`, `overrides` as str or bytes) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in {**SPLIT_TEXT, **overrides}.items():
        path = folder / f"{split}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return folder


def words(text):
    """Reference tokenisation: whitespace words with `<eos>` closing every line."""
    return [w for line in text.split("\n")[:-1] for w in line.split() + ["<eos>"]]


def decoded(corpus, split):
    return [corpus.vocabulary.itos[i] for i in getattr(corpus, split)]


@needs_ptb
def test_ptb_token_counts_and_vocabulary_match_the_data_readme(tfds_dir):
    corpus = ks.data.load_corpus("ptb", DEFAULT_DATA_DIR, tfds_dir=tfds_dir)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert len(corpus.vocabulary) == 10_000
    first_line = (DEFAULT_DATA_DIR / "ptb" / "train.txt").read_text().split("\n")[0].split() + ["<eos>"]
    np.testing.assert_array_equal(corpus.train[: len(first_line)], corpus.vocabulary.encode(first_line))


@needs_ptb
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
        ks.data.load_corpus("ptb3", tmp_path)


def test_synthetic_corpus_matches_its_files_with_empty_lines_kept(tmp_path, tfds_dir):
    train = "the cat sat\n\non the  mat\n"
    corpus = ks.data.load_corpus("wikitext2", write_corpus(tmp_path / "wikitext-2", train=train).parent, tfds_dir=tfds_dir)
    assert decoded(corpus, "train") == words(train) == ["the", "cat", "sat", "<eos>", "<eos>", "on", "the", "mat", "<eos>"]
    assert decoded(corpus, "valid") == words(SPLIT_TEXT["valid"])
    assert decoded(corpus, "test") == words(SPLIT_TEXT["test"])


def test_editing_a_split_file_is_seen_on_the_next_load(tmp_path, tfds_dir):
    folder = write_corpus(tmp_path / "ptb")
    assert decoded(ks.data.load_corpus("ptb", tmp_path, tfds_dir=tfds_dir), "train") == words(SPLIT_TEXT["train"])
    edited = "a dog ran\non the mat\nthe cat sat\n"
    (folder / "train.txt").write_text(edited, encoding="utf-8")
    assert decoded(ks.data.load_corpus("ptb", tmp_path, tfds_dir=tfds_dir), "train") == words(edited)


def test_two_folders_with_one_corpus_name_keep_their_own_contents(tmp_path, tfds_dir):
    first = write_corpus(tmp_path / "first" / "ptb").parent
    second_train = "a dog ran\n"
    second = write_corpus(tmp_path / "second" / "ptb", train=second_train, valid="a dog\n", test="ran\n").parent
    for _ in range(2):  # alternating loads reuse each folder's own prepared copy
        assert decoded(ks.data.load_corpus("ptb", first, tfds_dir=tfds_dir), "train") == words(SPLIT_TEXT["train"])
        assert decoded(ks.data.load_corpus("ptb", second, tfds_dir=tfds_dir), "train") == words(second_train)


def test_data_dir_may_be_the_corpus_folder_itself(tmp_path, tfds_dir):
    folder = write_corpus(tmp_path / "my_ptb_copy", train="one two three\n", valid="two\n", test="three one\n")
    corpus = ks.data.load_corpus("ptb", folder, tfds_dir=tfds_dir)
    assert decoded(corpus, "train") == ["one", "two", "three", "<eos>"]
    assert decoded(corpus, "test") == ["three", "one", "<eos>"]


@pytest.mark.parametrize("warm_cache", [False, True], ids=["fresh_cache", "warm_cache"])
@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "has no tokens"), ("\n \n\t\n", "has no tokens"), (b"the cat\n\xff\xfe sat\n", "is not UTF-8")],
    ids=["empty", "whitespace_only", "not_utf8"],
)
def test_unreadable_split_file_is_reported_by_name(tmp_path, text, problem, warm_cache):
    tfds_dir = tmp_path / "tfds"
    if warm_cache:  # a prepared copy of a good corpus must not stand in for the bad one
        ks.data.load_corpus("ptb", write_corpus(tmp_path / "good" / "ptb").parent, tfds_dir=tfds_dir)
    bad = write_corpus(tmp_path / "bad" / "ptb", valid=text)
    with pytest.raises(ValueError, match=re.escape(f"{bad / 'valid.txt'} {problem}")) as raised:
        ks.data.load_corpus("ptb", bad.parent, tfds_dir=tfds_dir)
    assert "UTF-8" in str(raised.value) and "data_dir" in str(raised.value)

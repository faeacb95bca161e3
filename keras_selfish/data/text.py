"""Word-level corpus files: tokens with `<eos>` at line ends, and the vocabulary."""

import pathlib

import numpy as np

EOS = "<eos>"


def read_tokens(path):
    """Whitespace tokens of a pre-tokenised corpus file, `<eos>` appended to every line.

    Raises:
        FileNotFoundError: naming the missing file and how to point at the data.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Corpus file {path} does not exist. Pass the directory that holds "
            f"train.txt / valid.txt / test.txt (flag --data_dir)."
        )
    with path.open(encoding="utf-8") as f:
        return tokenize_lines(f)


def tokenize_lines(lines):
    """Whitespace tokens of an iterable of lines, `<eos>` after every line."""
    tokens = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


class Vocabulary:
    """Token <-> id mapping, ids in order of first appearance in the training split.

    Args:
        tokens: the training tokens, or (with `words=True`) the word list itself.
    """

    def __init__(self, tokens, words=False):
        self.itos = list(tokens) if words else list(dict.fromkeys(tokens))
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        """int32 ids of `tokens`.

        A token missing from the vocabulary maps to `<unk>` when the vocabulary has
        it; otherwise a KeyError names the first unknown token.
        """
        if "<unk>" in self.stoi:
            unk = self.stoi["<unk>"]
            return np.fromiter((self.stoi.get(t, unk) for t in tokens), dtype=np.int32, count=len(tokens))
        try:
            return np.fromiter((self.stoi[t] for t in tokens), dtype=np.int32, count=len(tokens))
        except KeyError as e:
            raise KeyError(f"Token {e.args[0]!r} is not in the vocabulary (built from the training split).") from None

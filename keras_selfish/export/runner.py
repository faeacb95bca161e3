"""Run an exported single-step TFLite language model with LiteRT (`ai_edge_litert`)."""

import pathlib
import warnings

import numpy as np

from keras_selfish.export.inspect import weight_tensors


class TFLiteRunner:
    """On-device style runner: one token per `step`, states carried between calls.

        runner = ks.export.TFLiteRunner("lm.tflite", num_threads=2)
        runner.score(ids)                      # perplexity of a token-id stream
        runner.generate("the market", 20, temperature=0.8, seed=0)

    Args:
        path: a `.tflite` file written by `ks.export.tflite` (batch size 1 for
            `score`/`generate`); `<path>.vocab.txt` is read if present.
        num_threads: interpreter threads.
        use_xnnpack: None (default) picks the faster kernels for the file: LiteRT's
            built-in ones when it holds block-sparse weights (they run them
            sparse; XNNPack does not), else LiteRT's default delegate, XNNPack.
            True/False forces XNNPack or the built-in kernels (not XNNPack for
            1x16 block-sparse weights: it crashed on them here). If XNNPack cannot
            take the model (e.g. int8 with unstructured sparse weights), the
            runner warns and falls back to the built-in kernels.

    Attributes:
        resolver: "xnnpack" or "builtin", the kernels in use (also in the repr).
    """

    def __init__(self, path, num_threads=1, use_xnnpack=None):
        from ai_edge_litert import interpreter as litert

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No TFLite model at {self.path}; export one with ks.export.tflite(model, path).")
        blocks = {w["block"] for w in weight_tensors(self.path)} - {None}
        if use_xnnpack is None:
            use_xnnpack = not blocks
        elif use_xnnpack and 16 in blocks:
            warnings.warn(f"{self.path.name} holds 1x16 block-sparse weights, on which XNNPack crashes; using the built-in kernels.", stacklevel=2)
            use_xnnpack = False
        self.num_threads = num_threads
        resolvers = [litert.OpResolverType.AUTO] if use_xnnpack else []
        resolvers.append(litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        for resolver in resolvers:
            try:
                self.interpreter = litert.Interpreter(model_path=str(self.path), num_threads=num_threads, experimental_op_resolver_type=resolver)
                self.interpreter.allocate_tensors()
                signature = self.interpreter.get_signature_runner()
                self._inputs, self._outputs = signature.get_input_details(), signature.get_output_details()
                del signature  # it holds the interpreter, and Interpreter.invoke refuses to run while anything else does
                self._invoke(self._zero_inputs())  # a delegate that cannot run the graph fails here, not later
                break
            except (RuntimeError, ValueError) as e:
                if resolver == resolvers[-1]:
                    raise
                warnings.warn(f"XNNPack cannot run {self.path.name} ({e}); using the built-in kernels.", stacklevel=2)
        self.resolver = "xnnpack" if resolver == litert.OpResolverType.AUTO else "builtin"
        vocab = pathlib.Path(f"{self.path}.vocab.txt")
        self.vocabulary = vocab.read_text(encoding="utf-8").split("\n")[:-1] if vocab.is_file() else None
        self._ids = {w: i for i, w in enumerate(self.vocabulary or [])}
        self.reset()

    def __repr__(self):
        return f"TFLiteRunner({str(self.path)!r}, resolver={self.resolver!r}, num_threads={self.num_threads})"

    @property
    def xnnpack(self):
        """Whether XNNPack runs the model."""
        return self.resolver == "xnnpack"

    def _zero_inputs(self):
        return {name: np.zeros(d["shape"], d["dtype"]) for name, d in self._inputs.items()}

    def _invoke(self, inputs):
        """Outputs by signature name for inputs by signature name.

        Tensors by index, not through the signature runner, which resizes every
        input and re-runs the allocation on every call: about 40 us more per call
        here, measured on a model with the step's inputs and outputs and no work.
        """
        for name, value in inputs.items():
            self.interpreter.set_tensor(self._inputs[name]["index"], value)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(d["index"]) for name, d in self._outputs.items()}

    @property
    def batch_size(self):
        return int(self._inputs["token"]["shape"][0])

    def reset(self):
        """Zero the carried states (start of a new text)."""
        self.states = {k: v for k, v in self._zero_inputs().items() if k != "token"}

    def step(self, token):
        """Logits `(vocab,)` (or `(batch, vocab)`) for the next token after `token`; advances the states."""
        tokens = np.asarray(token, np.int32).reshape(self.batch_size)
        outputs = self._invoke({"token": tokens, **self.states})
        self.states = {k: outputs[k] for k in self.states}
        logits = outputs["logits"]
        return logits[0] if self.batch_size == 1 else logits

    def score(self, ids):
        """Perplexity of the id stream `ids` (each token predicted from the ones before), from zero states."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        self.reset()
        total = 0.0
        for current, following in zip(ids[:-1], ids[1:]):
            logits = self.step(current).astype(np.float64)
            top = logits.max()
            total += top + np.log(np.exp(logits - top).sum()) - logits[following]
        return float(np.exp(total / max(len(ids) - 1, 1)))

    def encode(self, text):
        """Ids of a whitespace-tokenised string (needs the vocabulary file)."""
        if self.vocabulary is None:
            raise ValueError(f"No vocabulary next to {self.path} ({self.path}.vocab.txt); pass token ids instead of text.")
        unknown = self._ids.get("<unk>")
        words = text.split()
        missing = [w for w in words if w not in self._ids]
        if missing and unknown is None:
            raise ValueError(f"Words not in the vocabulary: {missing[:5]}.")
        return [self._ids.get(w, unknown) for w in words]

    def generate(self, prompt, n, temperature=1.0, seed=None):
        """Sample `n` tokens after `prompt` (ids, or text when the vocabulary is known).

        Returns:
            the generated ids, or text when the prompt was text.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        as_text = isinstance(prompt, str)
        ids = self.encode(prompt) if as_text else [int(t) for t in prompt]
        if not ids:
            raise ValueError("The prompt needs at least one token.")
        rng = np.random.default_rng(seed)
        self.reset()
        for token in ids[:-1]:
            self.step(token)
        token, generated = ids[-1], []
        for _ in range(n):
            logits = self.step(token).astype(np.float64) / temperature
            probabilities = np.exp(logits - logits.max())
            token = int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))
            generated.append(token)
        return " ".join(self.vocabulary[t] for t in generated) if as_text else generated

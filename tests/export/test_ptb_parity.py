"""On PTB: perplexity of the exported TFLite models against Keras on the same test text."""

import keras
import numpy as np
import pytest

import keras_selfish as ks
from tests.conftest import DEFAULT_DATA_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "ptb" / "train.txt").is_file(), reason="PTB not available")
TOKENS = 1000


def test_float_within_a_tenth_of_a_percent_and_int8_within_two_percent(tmp_path):
    corpus = ks.data.load_corpus("ptb", DEFAULT_DATA_DIR, tfds_dir=tmp_path / "tfds")
    config = {"emsize": 32, "nhid": 32, "nlayers": 1, "vocabulary": corpus.vocabulary.itos}
    model = ks.models.language_model("lstm", 10000, batch_size=20, seq_len=20, stateful=True, **config)
    ks.sparsity.initialize(model, 0.33, seed=0)
    model.compile(keras.optimizers.SGD(20.0, global_clipnorm=0.25), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ks.data.lm_batches(corpus.train, 20, 20).take(80), epochs=1, verbose=0, shuffle=False)
    ids = corpus.test[:TOKENS]
    stream = ks.models.language_model("lstm", 10000, batch_size=1, seq_len=TOKENS, **config)
    stream.set_weights(model.get_weights())
    logits = keras.ops.convert_to_numpy(stream(ids[None]))[0, :-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    nll = top[:, 0] + np.log(np.exp(logits - top).sum(-1)) - logits[np.arange(TOKENS - 1), ids[1:]]
    keras_ppl = float(np.exp(nll.mean()))
    assert keras_ppl < 2000  # trained: far below the uniform 10,000
    float_ppl = ks.export.TFLiteRunner(ks.export.tflite(model, tmp_path / "f.tflite")).score(ids)
    assert abs(float_ppl / keras_ppl - 1) < 1e-3, (float_ppl, keras_ppl)
    int8 = ks.export.tflite(model, tmp_path / "q.tflite", quantize="int8", representative_ids=corpus.valid)
    with pytest.warns(UserWarning, match="XNNPack cannot run"):
        runner = ks.export.TFLiteRunner(int8)
    assert abs(runner.score(ids) / keras_ppl - 1) < 0.02

"""The export binaries: export_model writes the artifacts and a size table; run_tflite runs them."""

import keras_selfish as ks
from tests.conftest import run_here
from tests.conftest import run_process


def test_export_model_and_run_tflite(tmp_path):
    model = ks.models.language_model("lstm", 40, emsize=16, nhid=16, batch_size=2, seq_len=5, stateful=True, vocabulary=[f"w{i}" for i in range(40)])
    ks.sparsity.initialize(model, 0.33, seed=0)
    model.save(tmp_path / "model.keras")
    out = tmp_path / "export"
    result = run_process("export.export_model", f"--model={tmp_path / 'model.keras'}", f"--output_dir={out}", "--variants=saved_model,float,float_dense,dynamic")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("saved_model", "float.tflite", "float_dense.tflite", "dynamic.tflite"):
        assert name in result.stdout and (out / name).exists()
    float_row = next(line for line in result.stdout.splitlines() if line.startswith("float.tflite"))
    assert float_row.split()[-1] == "3/4"  # the [input; recurrent] matrix of each of the 2 layers, the softmax, the compressed embedding's values
    assert float_row.split()[-2] == "no"  # unstructured masks: DENSIFY at run time
    generated = run_process("export.run_tflite", f"--tflite={out / 'float.tflite'}", "--generate=w1 w2", "--n=5", "--seed=0")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert "xnnpack kernels" in generated.stdout  # unstructured: the runner keeps XNNPack
    words = generated.stdout.strip().splitlines()[-1].split()
    assert words[:2] == ["w1", "w2"] and len(words) == 7 and all(w.startswith("w") for w in words)


def test_export_model_rejects_bad_input_with_one_line(tmp_path):
    result = run_here("export.export_model", f"--model={tmp_path / 'missing.keras'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("export_model: error:")
    result = run_here("export.export_model", f"--model={tmp_path / 'missing.keras'}", "--variants=float,fp16")
    assert "unknown variants ['fp16']" in result.stderr.strip().splitlines()[-1]

"""Read a TFLite flatbuffer: its ops, which weights are stored, how large, and how sparse-encoded."""

import pathlib

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema


def _op_names():
    return {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


WEIGHT_TYPES = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16, schema.TensorType.INT8)  # not int index tables
_VECTORS = {1: (schema.Int32Vector, 4), 2: (schema.Uint16Vector, 2), 3: (schema.Uint8Vector, 1)}


def _index_bytes(sparsity):
    """Bytes of the sparse index arrays (segments and indices of every dimension)."""
    total = 0
    for j in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(j)
        for kind, table in ((meta.ArraySegmentsType(), meta.ArraySegments()), (meta.ArrayIndicesType(), meta.ArrayIndices())):
            if kind in _VECTORS and table is not None:
                vector_class, width = _VECTORS[kind]
                vector = vector_class()
                vector.Init(table.Bytes, table.Pos)
                total += vector.ValuesLength() * width
    return total


def _graph(path):
    """`(model, main subgraph, [op name of each operator])` of a `.tflite` file."""
    model = schema.Model.GetRootAsModel(pathlib.Path(path).read_bytes(), 0)
    names = _op_names()
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    return model, graph, [names.get(codes[graph.Operators(i).OpcodeIndex()], "?") for i in range(graph.OperatorsLength())]


def operators(path):
    """Op names of a `.tflite` file's main graph, in execution order (e.g. GATHER, FULLY_CONNECTED, DENSIFY)."""
    return _graph(path)[2]


def weight_tensors(path):
    """Constant weight tensors (float or int8 matrices) of a `.tflite` file, with the op that consumes them.

    Returns:
        list of dicts: `name`, `op` (e.g. FULLY_CONNECTED, GATHER, DENSIFY), `shape`,
        `dtype`, `sparse` (stored with TFLite sparsity parameters), `block` (the
        width of the 1 x b blocks of a block-sparse tensor, which the kernels run
        sparse; None otherwise), `bytes` (stored values plus, when sparse, the index
        arrays) and `dense_bytes` (what the dense tensor would take).
    """
    model, graph, ops = _graph(path)
    consumer = {}
    for i, name in enumerate(ops):
        for t in graph.Operators(i).InputsAsNumpy():
            consumer.setdefault(int(t), name)
    itemsize = {schema.TensorType.FLOAT32: 4, schema.TensorType.INT8: 1, schema.TensorType.FLOAT16: 2}
    dtype_name = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    found = []
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        size = model.Buffers(tensor.Buffer()).DataLength()
        if size == 0 or tensor.ShapeLength() < 2 or tensor.Type() not in WEIGHT_TYPES:
            continue
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
        sparsity = tensor.Sparsity()
        block = None
        if sparsity is not None:
            size += _index_bytes(sparsity)
            if sparsity.DimMetadataLength() > len(shape):  # block dimensions follow the tensor's own
                block = int(sparsity.DimMetadata(sparsity.DimMetadataLength() - 1).DenseSize())
        found.append({
            "name": tensor.Name().decode(),
            "op": consumer.get(i, "?"),
            "shape": shape,
            "dtype": dtype_name.get(tensor.Type(), "?"),
            "sparse": sparsity is not None,
            "block": block,
            "bytes": int(size),
            "dense_bytes": int(np.prod(shape)) * itemsize.get(tensor.Type(), 4),
        })
    return found

"""The private Keras APIs this package relies on, each wrapped once.

Keras 3 has no public way to walk every nested layer of a model (RNN cells,
`Bidirectional` halves, layers of nested models) or to find an optimizer's slot
index of a variable. Everything else in the package calls these wrappers, and
`tests/test_keras_private.py` fails loudly if Keras changes them.
"""


def flatten_layers(model, include_self=True):
    """Every layer nested in `model` (cells, wrapped layers, sub-models), each once.

    Args:
        model: a `keras.Layer` or `keras.Model`.
        include_self: whether `model` itself comes first.
    """
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def variable_index(optimizer, variable):
    """Index of `variable` in the per-variable lists of a built `optimizer`.

    Raises:
        KeyError: the optimizer does not train `variable`.
    """
    return optimizer._get_variable_index(variable)

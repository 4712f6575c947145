"""Measuring losslessness: how far an expanded model's outputs are from its source's."""

import keras
import numpy as np


def output_error(source, model, inputs):
    """`max |model(x) - source(x)| / max |source(x)|` over all outputs, in inference mode.

    Args:
        source: the source model.
        model: the expanded model.
        inputs: a batch both models accept.

    Returns:
        float, the worst relative error over the (flattened) outputs.

    Raises:
        ValueError: if the outputs differ in number or shape.
    """
    expected = keras.tree.flatten(source(inputs, training=False))
    actual = keras.tree.flatten(model(inputs, training=False))
    if len(expected) != len(actual):
        raise ValueError(
            f"'{model.name}' returns {len(actual)} outputs, its source '{source.name}' "
            f"{len(expected)}."
        )
    error = 0.0
    for a, b in zip(expected, actual):
        a = keras.ops.convert_to_numpy(a).astype("float64")
        b = keras.ops.convert_to_numpy(b).astype("float64")
        if a.shape != b.shape:
            raise ValueError(f"Output shape {b.shape} of '{model.name}', source {a.shape}.")
        error = max(error, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
    return error

"""Measuring losslessness: how far an expanded model's outputs are from its source's."""

import keras
import numpy as np

from keras_lemon.rules.registry import ExpansionError

# English sentences for a probe batch of real text (tokenized with the
# model's own tokenizer, see `keras_lemon.support.GraphFamily.probe_inputs`): real token
# statistics reach parts of the embedding tables random ids rarely do.
PROBE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Lossless expansion grows a small pretrained transformer into a larger one "
    "whose outputs are unchanged.",
    "Paris is the capital and most populous city of France.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
)


def output_error(source, model, inputs, expected_from_source=None):
    """`max |model(x) - source(x)| / max |source(x)|` over all outputs, in inference mode.

    Args:
        source: the source model.
        model: the expanded model.
        inputs: a batch both models accept.
        expected_from_source: optional function mapping each of the source's
            outputs (a NumPy array) to the output the expanded model must
            produce, for outputs that grow with the model (a backbone's
            hidden states); or a list of such functions (None for an output
            that keeps its size), one per flattened output.

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
    if not isinstance(expected_from_source, (list, tuple)):
        expected_from_source = [expected_from_source] * len(expected)
    error = 0.0
    for a, b, expand in zip(expected, actual, expected_from_source):
        a = keras.ops.convert_to_numpy(a).astype("float64")
        b = keras.ops.convert_to_numpy(b).astype("float64")
        if expand is not None:
            a = expand(a)
        if a.shape != b.shape:
            raise ValueError(f"Output shape {b.shape} of '{model.name}', source {a.shape}.")
        error = max(error, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
    return error


def check_lossless(source, model, inputs, tolerance, name, expected_from_source=None,
                   hint=None):
    """`output_error`, raising an `ExpansionError` above `tolerance`.

    Args:
        hint: a known cause to name in the error (default: an operation that
            keras_lemon does not model).

    Returns:
        float, the measured error.
    """
    error = output_error(source, model, inputs, expected_from_source)
    if not error <= tolerance:
        hint = hint or ("Some operation in the model treats features in a way keras_lemon "
                        "does not model; register a rule for it (keras_lemon.register_rule) "
                        "or report the model.")
        raise ExpansionError(
            f"{name}: the expanded model is not lossless on a probe batch: "
            f"max |diff| / max |output| = {error:.3g} > {tolerance:g}. {hint} "
            "Pass verify=False to get the model anyway."
        )
    return error

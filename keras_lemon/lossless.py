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

#: The lossless check's default tolerance (largest accepted max |diff| /
#: max |output|) per compute dtype. The expansion's math runs in float32 or
#: float64 and is cast once to the variable dtype, so a low-precision model's
#: error is its own round-off: the expanded model adds and orders its sums
#: differently from the source, and each differs from the exact function by
#: a few units of round-off per layer. Measured by `benchmarks/dtype_policies.py`
#: (expanded vs source, 4 to 30 blocks, BERT, ViT, Llama, Gemma, GPT-2 and the
#: real SmolLM2-135M): bfloat16 up to 0.043, float16 up to 0.0050, float32 up
#: to 6e-6. The tolerances are 32 units of round-off for the 16-bit types
#: (bfloat16 2**-8, float16 2**-11), about 3x the worst measurement, and the
#: float32 tolerance keeps 16x room above its measurement. A wrong expansion
#: is off by 0.1 to 1 and fails all of them; finer mistakes are only visible
#: in float32, so check a float32 copy for a tight bound (see `dtype_tolerance`).
TOLERANCES = {
    "float64": 1e-4,
    "float32": 1e-4,
    "float16": 32 * 2.0 ** -11,
    "bfloat16": 32 * 2.0 ** -8,
}


def least_precise_compute_dtype(model):
    """The compute dtype of `model`'s layers with the least precision.

    A model under `mixed_bfloat16` computes in bfloat16 although its
    variables are float32; a layer may also carry its own policy (keras-hub
    keeps some norms in float32). The output's round-off is set by the least
    precise of them.

    Returns:
        str, a key of `TOLERANCES` (float types only; float32 when no layer
        computes in a float type).
    """
    order = list(TOLERANCES)  # most to least precise
    worst = "float32"
    for layer in [model] + list(model._flatten_layers(include_self=False)):
        dtype = getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None)
        if dtype in TOLERANCES and order.index(dtype) > order.index(worst):
            worst = dtype
    return worst


def dtype_tolerance(model):
    """The default lossless tolerance for `model`: `TOLERANCES` of its least precise compute dtype.

    Args:
        model: the source model (the expanded model keeps its policies).

    Returns:
        (float, str): the tolerance and the compute dtype it was judged at.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, dtype="mixed_bfloat16")])
    >>> dtype_tolerance(model)
    (0.125, 'bfloat16')

    A float32 copy of a low-precision model (`keras.models.clone_model` with
    float32 layers, or the preset loaded with `dtype="float32"`) expands with
    float32's tolerance, which also catches errors below bfloat16's round-off.
    """
    dtype = least_precise_compute_dtype(model)
    return TOLERANCES[dtype], dtype


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
        tolerance: float, or None for the source's `dtype_tolerance`.
        hint: a known cause to name in the error (default: an operation that
            keras_lemon does not model).

    Returns:
        float, the measured error.
    """
    dtype = least_precise_compute_dtype(source)
    if tolerance is None:
        tolerance = TOLERANCES[dtype]
    error = output_error(source, model, inputs, expected_from_source)
    if not error <= tolerance:
        hint = hint or ("Some operation in the model treats features in a way keras_lemon "
                        "does not model; register a rule for it (keras_lemon.register_rule) "
                        "or report the model.")
        if dtype != "float32" and dtype != "float64":
            hint += (f" (The model computes in {dtype}: a float32 copy of it gives a tighter "
                     "check.)")
        raise ExpansionError(
            f"{name}: the expanded model is not lossless on a probe batch: "
            f"max |diff| / max |output| = {error:.3g} > {tolerance:g}, the tolerance for "
            f"outputs computed in {dtype} (keras_lemon.lossless.TOLERANCES). {hint} "
            "Pass verify=False to get the model anyway."
        )
    return error

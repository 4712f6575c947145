"""Which extras survive which per-feature maps (below both the rules and the graph).

An expanded activation keeps its pattern through a per-feature map `f`
applied to every unit alike when:

- `circular` extras are true copies: any `f`;
- `zero` extras hold 0: `f(0) = 0` (relu, gelu, tanh, products);
- `average` extras hold the mean of the units: `f` linear only.

`LINEAR`, `ZERO_PRESERVING` and `ANY` name these classes of maps.
"""

import keras

LINEAR, ZERO_PRESERVING, ANY = "linear", "zero-preserving", "per-feature"


def activation_linearity(activation):
    """`LINEAR` for the identity, `ZERO_PRESERVING` if `f(0) = 0`, else `ANY`.

    >>> activation_linearity(keras.activations.relu)
    'zero-preserving'
    """
    if activation is None or activation is keras.activations.linear:
        return LINEAR
    # A backend tensor, not a NumPy array: an activation written with Python
    # operators (`x * ops.sigmoid(1.702 * x)`, CLIP's quick_gelu) fails on
    # torch for an ndarray times a torch tensor.
    zero = keras.ops.convert_to_numpy(activation(keras.ops.zeros((1,), "float32")))
    return ZERO_PRESERVING if float(zero[0]) == 0.0 else ANY


def allows(linearity, pattern):
    """Whether extras of `pattern` survive an operation of `linearity`.

    >>> allows(ZERO_PRESERVING, "average"), allows(ZERO_PRESERVING, "zero")
    (False, True)
    """
    if pattern == "circular":
        return True
    if pattern == "zero":
        return linearity in (LINEAR, ZERO_PRESERVING)
    return linearity == LINEAR

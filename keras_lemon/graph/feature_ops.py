"""How stateless operations act on the feature (last) axis.

Between the layers that own weights, a transformer's tensors pass through
dropout, residual adds, slicing, pooling, activations, `x + y`. For an
expansion to stay exact, each such operation must treat every feature the
same way and must not mix features. Then an expanded activation stays
expanded with the same pattern, provided that:

- `average` extras (mean of the source features) pass only through *linear*
  per-feature maps (dropout at inference, adds, slicing, mean pooling);
- `zero` extras pass through maps with `f(0) = 0` (also relu, gelu, max
  pooling, products);
- `circular` extras are true copies and pass through any per-feature map.

`feature_behavior(op)` returns a `FeatureBehavior` for the operations known
to be per-feature, or None. Unknown operations are allowed only on
activations that do not grow.
"""

import dataclasses

import keras

# The linearity classes live below both the rules and the graph.
from keras_lemon.linearity import ANY
from keras_lemon.linearity import LINEAR
from keras_lemon.linearity import ZERO_PRESERVING
from keras_lemon.linearity import activation_linearity


@dataclasses.dataclass(frozen=True)
class FeatureBehavior:
    """What an operation does to the feature axis.

    Attributes:
        kind: `"pointwise"` (output features are the inputs' features),
            `"flatten"` (features flattened with the positions) or `"opaque"`.
        linearity: for pointwise ops, `LINEAR`, `ZERO_PRESERVING` or `ANY`.
        axis_attribute: name of an `axis` attribute that must not be the
            feature axis (reductions, concatenation).
    """

    kind: str
    linearity: str = LINEAR
    axis_attribute: str = None


_POINTWISE = FeatureBehavior("pointwise")

_LAYERS = {
    keras.layers.Dropout: _POINTWISE,
    keras.layers.SpatialDropout1D: _POINTWISE,
    keras.layers.GaussianNoise: _POINTWISE,
    keras.layers.GaussianDropout: _POINTWISE,
    keras.layers.AlphaDropout: _POINTWISE,
    keras.layers.Identity: _POINTWISE,
    keras.layers.Add: _POINTWISE,
    keras.layers.Subtract: _POINTWISE,
    keras.layers.Average: _POINTWISE,
    keras.layers.GlobalAveragePooling1D: _POINTWISE,
    keras.layers.GlobalAveragePooling2D: _POINTWISE,
    keras.layers.AveragePooling1D: _POINTWISE,
    keras.layers.AveragePooling2D: _POINTWISE,
    keras.layers.Multiply: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.Maximum: FeatureBehavior("pointwise", ANY),
    keras.layers.Minimum: FeatureBehavior("pointwise", ANY),
    keras.layers.ReLU: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.LeakyReLU: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.ELU: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.GlobalMaxPooling1D: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.GlobalMaxPooling2D: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.MaxPooling1D: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.MaxPooling2D: FeatureBehavior("pointwise", ZERO_PRESERVING),
    keras.layers.Concatenate: FeatureBehavior("pointwise", LINEAR, "axis"),
    keras.layers.Flatten: FeatureBehavior("flatten"),
}

# `keras.ops` operations, by class name (their classes are not public API).
_OPS_LINEAR = {
    "Add", "Subtract", "Negative", "ConvertToTensor", "Cast", "GetItem",
    "ExpandDims", "Squeeze", "Repeat", "Tile", "BroadcastTo", "Copy",
    "StopGradient", "Mean", "Sum", "Average", "Concatenate", "Stack",
    "Divide", "TrueDivide", "Multiply", "Reshape", "Transpose", "Slice",
    "Take", "TakeAlongAxis",
}
_OPS_ZERO = {"Relu", "Relu6", "Gelu", "Silu", "Tanh", "LeakyRelu", "Elu",
             "Selu", "Max", "Min", "Abs", "Absolute", "Square", "Sin", "Sign"}
_OPS_ANY = {"Sigmoid", "Exp", "Softplus", "Softsign", "HardSigmoid", "Maximum",
            "Minimum", "Sqrt", "Power", "Clip", "Log1p", "Expm1", "Cos",
            "Reciprocal"}
_OPS_AXIS = {"Mean", "Sum", "Max", "Min", "Concatenate", "Stack", "Repeat", "Take",
             "TakeAlongAxis"}
# With axis=None these reduce or gather over the flattened tensor, features included.
_OPS_FLATTEN_WITHOUT_AXIS = ("Mean", "Sum", "Max", "Min", "Take", "TakeAlongAxis")


def feature_behavior(op):
    """The `FeatureBehavior` of a stateless operation, or None if unknown."""
    if isinstance(op, keras.layers.Activation):
        return FeatureBehavior("pointwise", activation_linearity(op.activation))
    for cls, behavior in _LAYERS.items():
        if type(op) is cls:
            return behavior
    if not type(op).__module__.startswith("keras.src.ops"):
        return None
    name = type(op).__name__
    axis = "axis" if name in _OPS_AXIS else None
    if name in _OPS_LINEAR:
        return FeatureBehavior("pointwise", LINEAR, axis)
    if name in _OPS_ZERO:
        return FeatureBehavior("pointwise", ZERO_PRESERVING, axis)
    if name in _OPS_ANY:
        return FeatureBehavior("pointwise", ANY, axis)
    return None


def touches_feature_axis(behavior, node, shapes):
    """Whether a node reduces, concatenates or slices along the feature axis."""
    op = node.operation
    if not node.inputs:
        return False
    rank = len(shapes[node.inputs[0]])
    if behavior.axis_attribute:
        axis = getattr(op, behavior.axis_attribute, None)
        axes = axis if isinstance(axis, (tuple, list)) else [axis]
        if any(a is not None and a % rank == rank - 1 for a in axes) or axis is None \
                and type(op).__name__ in _OPS_FLATTEN_WITHOUT_AXIS:
            return True
    if type(op).__name__ == "GetItem" and len(node.args) > 1:
        return _key_touches_last_axis(node.args[1], rank)
    return False


def _key_touches_last_axis(key, rank):
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        last = key[-1]
        return last is not Ellipsis and last != slice(None)
    if len([k for k in key if k is not None]) < rank:
        return False
    return key[-1] != slice(None)

"""Rules for Keras core layers: Dense, EinsumDense, LayerNormalization,
Embedding, Conv2D and MultiHeadAttention.

Each rule reads the roles of its dimensions from `ctx.dims`:

- `"input"`: the activation the layer reads (fan-in axes),
- `"output"`: the activation it writes (fan-out axes),
- attention also `"heads"`, `"key_dim"`, `"value_dim"`.

References:
- Wang et al., "LEMON: Lossless model expansion", ICLR 2024, section 4.
"""

import math

import keras
import numpy as np

from keras_lemon.linearity import ANY
from keras_lemon.linearity import activation_linearity
from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.registry import register_rule


def normalized_dim(stream):
    """The pattern of a LayerNorm's output, given the pattern of its input.

    An `average`-expanded input normalizes to `zero` extras (pre-LN); a
    `circular` input with no partial copy (D a multiple of d) stays circular.
    A partial circular copy changes the mean and variance: no exact LayerNorm.
    Returns None in that case, unless the stream is marked inexact
    (`exact=False`): then the output is taken as circular too (the
    approximation).
    """
    if stream.is_identity or stream.pattern == "average":
        return DimExpansion(stream.source, stream.target, "zero") if stream.extras else stream
    if stream.pattern == "circular" and (stream.extras == 0 or not stream.exact):
        return stream
    return None


def norm_variance_ratio(inp):
    """`eta^2` of a LayerNorm or RMSNorm reading `inp`: `k d / D` for an average
    or zero-padded stream, else 1.

    A circular input (whole copies, or the inexact partial copies of
    `exact=False`) is normalized by plain tiling: gamma and epsilon unchanged.
    """
    return inp.variance_ratio if inp.pattern in ("average", "zero") else 1.0


def rms_normalized_dim(stream):
    """The pattern of an RMSNorm's output, given its input's; None if not exact.

    RMSNorm divides by `sqrt(mean(x^2) + eps)`. Whole circular copies keep
    `mean(x^2)`; zero extras scale it by `eta^2 = k d / D`, which `eps' =
    eta^2 eps` and `gamma' = eta gamma` undo, and the extras normalize to 0.
    An average extra adds `mean(x)^2` terms: no RMSNorm is exact there
    (pre-RMSNorm models keep their stream zero-padded instead).
    """
    if stream.is_identity or stream.pattern == "zero" or (
            stream.pattern == "circular" and (stream.extras == 0 or not stream.exact)):
        return DimExpansion(stream.source, stream.target, "zero") \
            if stream.pattern == "zero" and stream.extras else stream
    return None


def expand_rms_norm(layer, ctx, scale="scale", offset=0.0):
    """An RMSNorm `x / sqrt(mean(x^2) + eps) * (offset + scale)` over the last axis.

    Copies get `offset + scale' = eta (offset + scale)`; extras (zero input)
    keep a random scale, their output being 0 anyway. Flags: `identity`
    (a post-LN norm set to the identity scale for depth growth),
    `output_scale` (tied output embeddings, a scaled stream), `zero_output`
    (it ends a new block's residual branch: `offset + scale' = 0`),
    `input_scale` (a scaled stream: the epsilon must be `input_scale^2`
    times `eta^2 eps`). The target layer's epsilon must
    be `eta^2 eps` (checked against `layer.epsilon`, when it has one).

    Args:
        layer: the source layer; `scale` names its variable.
        ctx: the `ExpansionContext`.
        offset: 1.0 for Gemma-style norms that multiply by `1 + scale`.
    """
    inp = ctx.dims["input"]
    out = rms_normalized_dim(inp)
    if out is None:
        raise ctx.error(
            f"it is an RMSNorm and its input is expanded {inp.describe()}: average "
            "extras change the mean of squares, so no RMSNorm can be exact. A "
            "pre-norm model with RMSNorms keeps its stream zero-padded; a post-norm "
            f"one needs a width that is a multiple of {inp.source}."
        )
    ratio = norm_variance_ratio(inp)
    eps = getattr(layer, "epsilon", None)
    if ctx.target is not None and eps is not None:
        # A scaled stream (flags.input_scale = 1 / eta) keeps the epsilon.
        want = eps * ratio * ctx.flags.input_scale ** 2
        if not math.isclose(ctx.target.epsilon, want, rel_tol=1e-6):
            raise ctx.error(
                f"the target epsilon is {ctx.target.epsilon}, but an exact expansion "
                f"needs epsilon * k*d/D = {want}; the model's config must let the "
                "epsilon of this norm change (or use a width that is a multiple of "
                f"{inp.source})."
            )
    if ctx.flags.identity:
        ctx.set(scale, np.full(inp.target, 1.0 - offset, np.float32), "identity scale")
        return
    if ctx.flags.zero_output:
        # It ends a new block's branch (Gemma 2's post-attention norm): its
        # output is exactly 0, and the gradient of its scale is not.
        ctx.set(scale, np.full(inp.target, -offset, np.float32), "zero output")
        return
    eta = math.sqrt(ratio)
    effective = ctx.source_value(scale) + offset
    value = out.expand(effective) * eta * ctx.flags.output_scale
    if out.pattern == "zero" and out.extras:
        noise = ctx.noise(scale, (out.extras,), effective)
        value[out.copies * out.source:] = np.mean(effective) + noise
    ctx.set(scale, value - offset, f"copies x eta={eta:.4g}" + (", extras random" if out.extras else ""))


@register_rule(keras.layers.RMSNormalization, kind="normalization")
def expand_keras_rms_norm(layer, ctx):
    """Keras' RMSNormalization over the last axis (see `expand_rms_norm`)."""
    if len(np.atleast_1d(layer.axis)) != 1:
        raise ctx.error(f"normalizes over axes {layer.axis}; only the feature axis is supported.")
    expand_rms_norm(layer, ctx)


def is_rms_norm(layer):
    """True for a normalization whose rule is an RMSNorm's (registered with
    `register_rms_norm`)."""
    return isinstance(layer, tuple(RMS_NORMS))


#: Layer classes that normalize by the root mean square (no centering).
RMS_NORMS = [keras.layers.RMSNormalization]


def register_rms_norm(layer_class):
    """Marks a normalization class as an RMSNorm (its model's stream grows zero-padded)."""
    if layer_class not in RMS_NORMS:
        RMS_NORMS.append(layer_class)
    return layer_class


def _check_activation(layer, ctx, output):
    """`average`/`zero` extras survive only activations with f(mean)=mean(f) / f(0)=0."""
    activation = getattr(layer, "activation", None)
    if output.extras == 0 or output.pattern == "circular" or activation is None:
        return
    if activation is keras.activations.linear:
        return
    name = getattr(activation, "__name__", str(activation))
    if output.pattern == "zero":
        if activation_linearity(activation) != ANY:
            return
    raise ctx.error(
        f"its activation '{name}' is applied before it writes into an "
        f"'{output.pattern}'-expanded activation ({output.describe()}); "
        f"{output.pattern} extras are exact only through linear maps. Use a "
        f"width that is a multiple of {output.source}, or move the activation."
    )


@register_rule(keras.layers.Dense, kind="projection")
def expand_dense(layer, ctx):
    """Dense: kernel `(in, out)` fan-in on axis 0, fan-out on axis 1."""
    inp, out = ctx.dims["input"], ctx.dims["output"]
    _check_activation(layer, ctx, out)
    if ctx.flags.zero_output:
        if activation_linearity(layer.activation) == ANY:
            raise ctx.error(
                "a new block's output projection must output 0, but its "
                "activation is not 0 at 0; depth growth needs an output "
                "projection with a linear (or relu/gelu-like) activation."
            )
        ctx.cancel("kernel", {0: inp}, {1: out})
        if layer.bias is not None:
            ctx.zeros("bias", {0: out})
        return
    scale = ctx.flags.output_scale  # a projection writing a scaled stream
    ctx.fan_in("kernel", {0: inp}, {1: out}, scale=scale)
    if layer.bias is not None:
        ctx.fan_out("bias", {0: out}, scale=scale)


def is_dense_like(layer):
    """True for an EinsumDense that is a Dense on the last axis (`"btd,df->btf"`).

    keras-hub's Gemma writes its feed-forward layers this way.
    """
    equation = getattr(layer, "equation", "").replace(" ", "")
    try:
        inputs, output = equation.split("->")
        source, kernel = inputs.split(",")
    except ValueError:
        return False
    return (len(kernel) == 2 and "." not in equation and source[:-1] == output[:-1]
            and kernel == source[-1] + output[-1] and kernel[0] not in output
            and kernel[1] not in source and layer.bias_axes in (None, "", output[-1]))


@register_rule(keras.layers.EinsumDense, kind="projection")
def expand_einsum_dense(layer, ctx):
    """EinsumDense: the enclosing rule names the kernel's axes in `ctx.flags`.

    Flags: `fan_in` and `fan_out` (`{kernel axis: dim}`), `scale` (default 1),
    `zero_output`. The bias spans the kernel's trailing output axes. Without
    `fan_in` (an EinsumDense met in a traced graph), one that is a Dense on
    the last axis (`is_dense_like`) is expanded like a Dense.
    """
    if ctx.flags.fan_in is None:
        if not is_dense_like(layer):
            raise ctx.error(
                f"an EinsumDense with equation {layer.equation!r} on its own has no known "
                "input/output axes (only a Dense-like one, 'btd,df->btf', has); expand it "
                "from the rule of the layer that owns it, or register a rule."
            )
        expand_dense(layer, ctx)
        return
    fan_in, fan_out = ctx.flags.fan_in, ctx.flags.fan_out or {}
    kernel_rank = len(layer.kernel.shape)
    bias_rank = len(layer.bias.shape) if layer.bias is not None else 0

    def on_bias(axes):
        shift = kernel_rank - bias_rank
        return {a - shift: d for a, d in axes.items() if a >= shift}

    if ctx.flags.zero_output:
        ctx.cancel("kernel", fan_in, fan_out)
        if layer.bias is not None:
            ctx.zeros("bias", on_bias(fan_out))
        return
    scale = ctx.flags.scale
    ctx.fan_in("kernel", fan_in, fan_out, scale=scale)
    if layer.bias is not None:
        bias_in = on_bias(fan_in)
        if bias_in:
            # A bias on an axis that is split like fan-in (the query's head
            # size): its copies must sum to the source bias as well.
            ctx.fan_in("bias", bias_in, on_bias(fan_out), scale=scale)
        else:
            ctx.fan_out("bias", on_bias(fan_out), scale=scale)


@register_rule(keras.layers.LayerNormalization, kind="normalization")
def expand_layer_norm(layer, ctx):
    """LayerNorm: `gamma' = eta gamma`, `beta' = beta` on copies, `eps' = eta^2 eps`.

    With an `average` input (`eta^2 = k d / D`) the output is `zero`-expanded;
    with a circular input of a multiple width it is circular (`eta = 1`).
    Flags: `identity` (gamma 1, beta 0: post-LN depth growth), `output_scale`
    (multiplies gamma and beta: tied output embeddings).
    """
    inp = ctx.dims["input"]
    if len(np.atleast_1d(layer.axis)) != 1:
        raise ctx.error(f"normalizes over axes {layer.axis}; only one feature axis is supported.")
    if getattr(layer, "rms_scaling", False):
        raise ctx.error("rms_scaling=True is not supported (use an RMSNorm rule).")
    out = normalized_dim(inp)
    if out is None:
        raise ctx.error(
            f"its input is expanded {inp.describe()}: a partial circular copy "
            "changes the mean and variance, so no LayerNorm can be exact. Use a "
            f"width that is a multiple of {inp.source} (post-LN models such as "
            "BERT need this), e.g. "
            + ", ".join(str(inp.source * m) for m in (2, 3, 4))
            + "."
        )
    eta = math.sqrt(norm_variance_ratio(inp))
    if ctx.target is not None:
        want = layer.epsilon * norm_variance_ratio(inp)
        if not math.isclose(ctx.target.epsilon, want, rel_tol=1e-6):
            raise ctx.error(
                f"the target epsilon is {ctx.target.epsilon}, but an exact "
                f"expansion needs epsilon * k*d/D = {want}. Build the target "
                "with the scaled epsilon (make epsilon a config argument of the "
                "layer that creates this LayerNorm), or use a width that is a "
                f"multiple of {inp.source}, which keeps epsilon."
            )
    scale = ctx.flags.output_scale
    if ctx.flags.identity:
        if layer.scale:
            ctx.set("gamma", np.ones(inp.target, np.float32), "ones (identity)")
        if layer.center:
            ctx.set("beta", np.zeros(inp.target, np.float32), "zeros (identity)")
        return
    if layer.scale:
        gamma = out.expand(ctx.source_value("gamma")) * eta * scale
        if out.pattern == "zero" and out.extras:
            # Extra units normalize to exactly 0, so their gamma is free: keep
            # it random around the source's mean so that they can train.
            source_gamma = ctx.source_value("gamma")
            noise = ctx.noise("gamma", (out.extras,), source_gamma)
            gamma[out.copies * out.source :] = np.mean(source_gamma) + noise
        ctx.set("gamma", gamma, f"copies x eta={eta:.4g}" + (f" x{scale:.4g}" if scale != 1 else "")
                + (", extras random" if out.extras else ""))
    if layer.center:
        ctx.fan_out("beta", {0: out}, scale=scale)


@register_rule(keras.layers.Embedding, kind="projection")
def expand_embedding(layer, ctx):
    """Embedding: the feature axis is fan-out with the pattern of `"output"`
    (`output_scale` rescales the table, see `ModelTraits.embedding_scale`)."""
    ctx.fan_out("embeddings", {1: ctx.dims["output"]}, scale=ctx.flags.output_scale)


@register_rule(keras.layers.Conv2D, kind="projection")
def expand_conv2d(layer, ctx):
    """Conv2D: kernel `(h, w, in, out)`: fan-in on axis 2, fan-out on axis 3."""
    if layer.groups != 1:
        raise ctx.error("grouped convolutions are not supported.")
    inp, out = ctx.dims["input"], ctx.dims["output"]
    _check_activation(layer, ctx, out)
    ctx.fan_in("kernel", {2: inp}, {3: out})
    if layer.use_bias:
        ctx.fan_out("bias", {0: out})


#: Attention layer class -> function(layer) -> (heads, key_dim, value_dim).
_ATTENTION_SHAPES = {}
#: Attention layer class -> call arguments read by the query's projections.
_SAME_WIDTH_ARGUMENTS = {}


#: Attention layer class -> names of its (query, value, key) call arguments.
_INPUT_ARGUMENTS = {}


def register_attention_shape(layer_class, shape, same_width_arguments=(),
                             input_arguments=("query", "value", "key")):
    """Tells the graph path the head count and sizes of an attention class.

    Args:
        layer_class: a layer registered with `kind="attention"`.
        shape: function `layer -> (heads, key_dim, value_dim)`.
        same_width_arguments: names of call arguments that the layer projects
            with the same kernels as its input (DeBERTa's relative position
            embeddings go through the query and key projections): they must
            grow exactly as the input does.
        input_arguments: the names of its query, value and key arguments
            (positions 0, 1, 2); a self-attention layer names one
            (`("hidden_states",)` for keras-hub's Llama).
    """
    _ATTENTION_SHAPES[layer_class] = shape
    _SAME_WIDTH_ARGUMENTS[layer_class] = tuple(same_width_arguments)
    _INPUT_ARGUMENTS[layer_class] = tuple(input_arguments)


def attention_inputs(node):
    """`(query, value, key)` arguments of an attention layer's call (a traced node).

    A missing value is the query, a missing key the value (self-attention).
    """
    names = ("query", "value", "key")
    for cls in type(node.operation).__mro__:
        if cls in _INPUT_ARGUMENTS:
            names = _INPUT_ARGUMENTS[cls]
            break
    found = [node.argument(i, name) for i, name in enumerate(names)]
    query = found[0]
    value = found[1] if len(found) > 1 and found[1] is not None else query
    key = found[2] if len(found) > 2 and found[2] is not None else value
    return query, value, key


def same_width_arguments(layer):
    """The call arguments of an attention layer that grow like its input."""
    for cls in type(layer).__mro__:
        if cls in _SAME_WIDTH_ARGUMENTS:
            return _SAME_WIDTH_ARGUMENTS[cls]
    return ()


def attention_shape(layer):
    """`(heads, key_dim, value_dim)` of an attention layer."""
    for cls in type(layer).__mro__:
        if cls in _ATTENTION_SHAPES:
            return tuple(int(v) for v in _ATTENTION_SHAPES[cls](layer))
    raise ValueError(
        f"Attention layer '{layer.name}' ({type(layer).__name__}) has no registered "
        "shape; call keras_lemon.rules.core_layers.register_attention_shape for its class."
    )


register_attention_shape(
    keras.layers.MultiHeadAttention,
    lambda layer: (layer.num_heads, layer.key_dim, layer.value_dim or layer.key_dim))


@register_rule(keras.layers.MultiHeadAttention, kind="attention")
def expand_multi_head_attention(layer, ctx):
    """Multi-head attention: heads circular, head sizes may grow, output fan-out.

    Kernels: query/key/value `(in, heads, head)`, attention_output
    `(heads, value_head, out)`. Query, key and value heads are copied
    together. When the key head size grows from h to H, key columns are
    circular, query columns are split like fan-in so that `q'.k' = q.k`, then
    scaled by `sqrt(H/h)` to undo the change of the `1/sqrt(key_dim)` scale.

    Roles: `"input"` (query, key and value inputs), `"output"`, `"heads"`,
    `"key_dim"`, `"value_dim"`; flag `zero_output` for new blocks.
    """
    if getattr(layer, "_use_gate", False):
        raise ctx.error("gated attention (use_gate=True) is not supported.")
    inp, out = ctx.dims["input"], ctx.dims["output"]
    heads, key, value = ctx.dims["heads"], ctx.dims["key_dim"], ctx.dims["value_dim"]
    for name, dim, size in (("heads", heads, layer.num_heads), ("key_dim", key, layer.key_dim),
                            ("value_dim", value, layer.value_dim or layer.key_dim)):
        if dim.source != size:
            raise ctx.error(f"{name} is {size} but the plan expands {dim.describe()}.")
    if key.extras and not key.is_identity and key.pattern != "circular":
        raise ctx.error("the key head size must grow circularly.")
    query_split = {} if key.is_identity else {2: key}
    ctx.expand_sublayer(
        "_query_dense",
        flags={"fan_in": {0: inp, **query_split}, "fan_out": {1: heads},
               "scale": math.sqrt(key.target / key.source)},
    )
    ctx.expand_sublayer("_key_dense", flags={"fan_in": {0: inp}, "fan_out": {1: heads, 2: key}})
    ctx.expand_sublayer("_value_dense", flags={"fan_in": {0: inp}, "fan_out": {1: heads, 2: value}})
    ctx.expand_sublayer(
        "_output_dense",
        flags={"fan_in": {0: heads, 1: value}, "fan_out": {2: out},
               "zero_output": ctx.flags.zero_output},
    )

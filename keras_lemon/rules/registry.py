"""The rule registry and the context a rule works in.

A *rule* says how one Keras layer class grows. It is a function
`rule(layer, ctx)` that reads the source `layer`'s weights and writes the
expanded weights of its counterpart in the target model through `ctx`
(an `ExpansionContext`). Rules never see backend tensors: `ctx` hands them
NumPy arrays and takes NumPy arrays back, so the same seed gives the same
expanded weights on every backend.

The roles of the layer's dimensions (which axis is the residual stream, with
which pattern; the heads; the FFN width...) come in `ctx.dims`, filled by the
model adapter or by the rule of the enclosing layer. Composite layers
(attention, transformer blocks) expand their sublayers with
`ctx.expand_sublayer(attribute, **dims)`.

Example:

```python
import keras
import keras_lemon

class Scale(keras.layers.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), name="scale")
    def call(self, x):
        return x * self.scale

@keras_lemon.register_rule(Scale)
def expand_scale(layer, ctx):
    # An output axis: copies follow the pattern of the activation.
    ctx.fan_out("scale", {0: ctx.dims["output"]})
```
"""

import concurrent.futures
import dataclasses
import os
import zlib

import keras
import numpy as np

from keras_lemon import index_maps

_RULES = {}


KINDS = ("projection", "pointwise", "normalization", "attention", "positional")
_KINDS = {}


def register_rule(layer_class, rule=None, *, kind=None):
    """Registers how to expand a layer class (usable as a decorator).

    Args:
        layer_class: a `keras.layers.Layer` subclass. Subclasses use the rule
            of their nearest registered base class.
        rule: function `rule(layer, ctx)`; see `ExpansionContext`.
        kind: how the layer treats features when it appears inside a
            functional or subclassed model, so that the roles of the
            activations around it can be inferred:
            `"projection"` (its output features are its own, like `Dense`:
            `ctx.dims["input"]` and `ctx.dims["output"]` can differ),
            `"pointwise"` (its output features are its input's, like a
            per-feature scale: both dims are the same), `"positional"` (its
            output depends only on its input's shape, like a position
            embedding table: adding it to its input is no residual
            connection). `None` (default): keep the kind already registered
            for this class, if any (overriding the rule of a keras-hub layer
            keeps its role in traced graphs); a class with no kind is
            expanded only by the rule of a layer that owns it (as
            `EinsumDense` inside attention), and a composite one (with
            sublayers) is opened up when it appears inside a traced model.

    Returns:
        The rule (so that `@register_rule(MyLayer)` keeps the function).
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            f"register_rule needs a keras.layers.Layer subclass, got {layer_class!r}."
        )
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}.")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"A rule must be callable, got {fn!r}.")
        _RULES[layer_class] = fn
        if kind is not None or layer_class not in _KINDS:
            _KINDS[layer_class] = kind
        return fn

    return decorator if rule is None else decorator(rule)


def get_kind(layer):
    """The graph kind registered with the rule of `layer`'s class, or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _KINDS.get(cls)
    return None


def get_rule(layer):
    """The rule for `layer`'s class (or nearest registered base), or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


class ExpansionError(ValueError):
    """A requested expansion cannot be done exactly (a `ValueError`)."""


@dataclasses.dataclass(frozen=True)
class ModelTraits:
    """What a model family computes from its config outside its layers.

    The rebuilt model computes these again from its new config, so the
    expansion must account for them; the graph shows only their values.

    Attributes:
        embedding_scale: `config -> factor` that the token embedding's
            output is multiplied by (Gemma: `sqrt(hidden_dim)`). The table
            is rescaled by `source factor / target factor`, and a tied output
            projection's final norm by the inverse.
        embedding: attribute of the backbone holding that embedding.
        size_multiples: `{config key: (role, factor)}` for a size key that
            holds `factor` times the size of a role (`"hidden"`, `"heads"`,
            `"intermediate"`...): Gemma's `intermediate_dim` is twice each
            gated feed-forward layer's width.
        fixed_norm_epsilon: the model builds its stream's norms with an
            epsilon that its config does not set (keras-hub's Gemma blocks):
            a zero-padded stream of a width that is not a multiple is scaled
            instead (`KerasModelAdapter.stream_scale`).
        layer_pattern: `config -> tuple` of block kinds, one per position of
            a period (Gemma 2: `("sliding", "global")`; Gemma 3: five
            `"local"` and one `"global"`): block `i` is of kind
            `pattern[i % len(pattern)]`. Existing blocks must keep their
            kind and a new block gets the kind of the block it copies;
            "interleave" then inserts whole periods (`keras_lemon.depth`).
    """

    embedding_scale: object = None
    embedding: str = "token_embedding"
    size_multiples: dict = dataclasses.field(default_factory=dict)
    fixed_norm_epsilon: bool = False
    layer_pattern: object = None


_MODEL_TRAITS = {}


def register_model_traits(model_class, **traits):
    """Declares a model class's `ModelTraits` (keyword arguments: its fields)."""
    _MODEL_TRAITS[model_class] = ModelTraits(**traits)


def model_traits(model):
    """The `ModelTraits` of `model` (a task: of its backbone); defaults if none."""
    model = getattr(model, "backbone", model)
    for cls in type(model).__mro__:
        if cls in _MODEL_TRAITS:
            return _MODEL_TRAITS[cls]
    return ModelTraits()


@dataclasses.dataclass(frozen=True)
class LayerFlags:
    """Per-layer instructions from the enclosing rule or the model path (`ctx.flags`).

    Rules and adapters pass them as a dict (`flags={"zero_output": True}`);
    the context turns it into this, so that a misspelt instruction fails
    loudly instead of being ignored.

    Attributes:
        zero_output: a new block's output projection: it must output 0
            (cancelling weights for `"lemon"`, zeros for the baselines).
        identity: a post-LN LayerNorm set to gamma 1, beta 0 (depth growth).
        output_scale: multiplies a LayerNorm's gamma and beta (tied output
            embeddings: 1 / the number of copies), an embedding table
            (`ModelTraits.embedding_scale`), or the output of a projection or
            attention layer that writes a scaled stream.
        input_scale: a norm's input arrives multiplied by this (a scaled
            stream): its epsilon stays `input_scale^2` times what a plain
            zero-padded stream needs.
        fan_in, fan_out: `{kernel axis: DimExpansion}` of an `EinsumDense`,
            named by the layer that owns it (attention).
        scale: multiplies an `EinsumDense`'s result (the query when the
            head size grows).
        axes: `{attribute: {axis: DimExpansion}}` for the variables a custom
            layer or model creates itself.
    """

    zero_output: bool = False
    identity: bool = False
    output_scale: float = 1.0
    input_scale: float = 1.0
    fan_in: dict = None
    fan_out: dict = None
    scale: float = 1.0
    axes: dict = None

    @classmethod
    def of(cls, flags, path):
        if isinstance(flags, cls):
            return flags
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flags or {}) - known)
        if unknown:
            raise ExpansionError(
                f"Layer '{path}': unknown flags {unknown}; the flags are {sorted(known)}."
            )
        return cls(**(flags or {}))


#: Noise is drawn in chunks of this many values, each from its own
#: generator (seeded by the chunk's index): the values do not depend on how
#: many threads draw them.
NOISE_CHUNK = 1 << 20
_noise_pool = None


def uniform_noise(seed_words, shape, half_width):
    """float32 draws from `U(-half_width, half_width)`, in parallel chunks.

    Chunk `c` of the flattened array comes from
    `np.random.default_rng(seed_words + [c])`; NumPy's generators and the
    in-place arithmetic release the GIL, so large draws use every core.

    Args:
        seed_words: list of ints, the generator's seed (expansion seed, path hash).
        shape: the output shape.
        half_width: float, `a` of `U(-a, a)`.
    """
    global _noise_pool
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    width = np.float32(2.0 * half_width)

    def fill(chunk):
        part = flat[chunk * NOISE_CHUNK:(chunk + 1) * NOISE_CHUNK]
        np.random.default_rng(list(seed_words) + [chunk]).random(out=part, dtype=np.float32)
        part -= np.float32(0.5)
        part *= width

    chunks = range(-(-flat.size // NOISE_CHUNK))
    if len(chunks) <= 1:
        for chunk in chunks:
            fill(chunk)
        return out
    if _noise_pool is None:
        threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
        _noise_pool = concurrent.futures.ThreadPoolExecutor(threads, "keras_lemon_noise")
    list(_noise_pool.map(fill, chunks))
    return out


class ExpansionContext:
    """What a rule gets: source layer, target layer, roles, and writers.

    Attributes:
        source: the source layer (never modified).
        target: the target layer, or `None` when only planning.
        path: the target layer's path (`"transformer_layer_3/..."`), used in
            messages, in the plan and to seed the random draws.
        dims: dict of role name -> `index_maps.DimExpansion`. Common names:
            `"input"`, `"output"` (the layer's input/output feature axes),
            `"heads"`, `"key_dim"`, `"value_dim"`, `"intermediate"`,
            `"stream"` (the residual stream).
        flags: `LayerFlags`, per-layer instructions from the enclosing rule
            (e.g. `zero_output` for a new block's output projection).
        method: `"lemon"` (random fan-in, cancelling new blocks),
            `"net2net"` (equal split, zero new blocks) or `"zero_blocks"`
            (random fan-in, zero new blocks).
    """

    def __init__(self, source, target, path, dims, flags, session):
        self.source = source
        self.target = target
        self.path = path
        self.dims = dict(dims)
        self.flags = LayerFlags.of(flags, path)
        self._session = session

    @property
    def method(self):
        return self._session.method

    @property
    def planning(self):
        return self.target is None

    # --- reading -------------------------------------------------------------

    def variable(self, name):
        """The source variable `name` (an attribute of the layer)."""
        layer = self.source
        var = getattr(layer, name, None)
        if not isinstance(var, keras.Variable):
            raise ExpansionError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has no variable "
                f"attribute {name!r}; its rule does not match this layer "
                "(LoRA-enabled or quantized layers are not supported)."
            )
        return var

    def source_value(self, name):
        """The source variable `name` as a float32 NumPy array."""
        return self._session.read(self.variable(name))

    # --- writing -------------------------------------------------------------

    def set(self, name, value, how):
        """Writes `value` to the target variable `name`; `how` goes in the plan."""
        value = np.asarray(value, dtype=np.float32)
        self._session.record(self, name, self.variable(name), value, how)

    def fan_out(self, name, axes, scale=1.0):
        """Target = source expanded on its output `axes` (`{axis: dim}`)."""
        value = index_maps.fan_out(self.source_value(name), axes)
        self.set(name, value * scale if scale != 1.0 else value, _how("fan-out", axes, scale))

    def fan_in(self, name, fan_in, fan_out=None, scale=1.0):
        """Target = source split over the copies of its inputs (see `fan_in_split`).

        The random shares vary along the fan-in axes only: the copies of an
        *output* unit keep identical incoming weights (the fan-out axes are
        expanded after the split). So copies stay bitwise equal in the
        forward pass, and float round-off cannot make them drift apart and
        be amplified by the blocks that follow. Symmetry is still broken as
        in LEMON: each consumer weights the copies of its inputs unequally,
        so the copies receive different gradients.

        Args:
            name: variable attribute name.
            fan_in: `{axis: dim}` of the axes that read expanded activations
                (for a query kernel whose head size grows, also that axis).
            fan_out: `{axis: dim}` of output axes.
            scale: multiplies the result (query scale when key_dim grows).
        """
        fan_out = fan_out or {}
        weight = self.source_value(name)
        # An axis that keeps its size has no copies: R + P(W - M^T R) = W
        # there, exactly only without the draw (depth-only growth copies
        # whole blocks this way).
        growing = {axis: dim for axis, dim in fan_in.items() if not dim.is_identity}
        if growing:
            noise = self.noise(name, _target_shape(weight.shape, growing), weight)
            weight = index_maps.fan_in_split(weight, noise, growing, overwrite_noise=True)
        value = index_maps.fan_out(weight, fan_out)
        how = _how("fan-in", fan_in) + (" " + _how("fan-out", fan_out) if fan_out else "")
        self.set(name, value * scale if scale != 1.0 else value, how + _scale_note(scale))

    def cancel(self, name, fan_in, fan_out=None):
        """Target weights whose inputs' copies sum to zero: the layer outputs 0.

        As in `fan_in`, the noise varies along the fan-in axes only.
        """
        fan_out = fan_out or {}
        source = self.source_value(name)
        shape = _target_shape(source.shape, fan_in)
        if self.method == "lemon" and any(not dim.is_identity for dim in fan_in.values()):
            noise = self.noise(name, shape, source)
        else:
            # net2net and zero_blocks (LLaMA-Pro) start new blocks at exactly 0,
            # and so does LEMON where no input has copies (cancel(R) = R - R).
            noise = np.zeros(shape, np.float32)
        value = index_maps.fan_out(index_maps.cancel(noise, fan_in), fan_out)
        kind = "cancel (copies sum to 0)" if self.method == "lemon" else "zero"
        self.set(name, value, f"{kind} [{_axes_note(fan_in)}]")

    def zeros(self, name, axes):
        """Target = zeros of the source shape expanded on `axes`."""
        shape = _target_shape(self.variable(name).shape, axes)
        self.set(name, np.zeros(shape, np.float32), "zeros")

    def noise(self, name, shape, like):
        """LEMON's random fan-in matrix `R` for variable `name` (zeros for net2net).

        `zero_blocks` draws it too: it differs from LEMON only in new blocks.

        Uniform with the standard deviation of the source weight `like`
        times the session's `noise_scale` (LEMON uses the target's fresh
        initialization; any zero-mean noise of that scale breaks symmetry,
        and uniform draws are twice as fast as normal ones). The generator is seeded by the expansion seed and
        the target variable's path, so the draw does not depend on the order
        in which rules run, nor on the backend.
        """
        scale = self._session.noise_scale
        if self.method == "net2net" or self.planning or scale == 0:
            return np.zeros(shape, np.float32)
        std = float(np.std(like)) if np.size(like) > 1 else 0.0
        std = (std if std > 0 else 0.02) * scale
        # U(-a, a) has std a / sqrt(3).
        return uniform_noise([self._session.seed, zlib.crc32(f"{self.path}/{name}".encode())],
                             shape, np.float32(np.sqrt(3.0) * std))

    # --- sublayers -----------------------------------------------------------

    def expand_sublayer(self, attribute, *, index=None, source=None, name=None,
                        flags=None, **dims):
        """Expands the sublayer held in `attribute` with its registered rule.

        Args:
            attribute: attribute name of the sublayer (same on source and
                target), e.g. `"_query_dense"`.
            index: for an attribute holding a list of layers (blocks), the
                position in the *target*'s list.
            source: expand from this source layer instead of the same
                attribute (and index) of `ctx.source`: a new block copying
                a source block, a layer norm carried from another block.
            name: the target sublayer's name in paths (default: the source's).
            flags: per-layer instructions for the sublayer's rule.
            **dims: role overrides; other roles are inherited.
        """
        if source is None:
            source = getattr(self.source, attribute)
            source = source if index is None else source[index]
        target = None
        if self.target is not None:
            target = getattr(self.target, attribute)
            target = target if index is None else target[index]
        name = name or (source.name if target is None else target.name)
        self._session.expand_layer(
            source, target, f"{self.path}/{name}", {**self.dims, **dims}, flags
        )

    def error(self, message):
        """An `ExpansionError` naming this layer."""
        return ExpansionError(
            f"Layer '{self.path}' ({type(self.source).__name__}): {message}"
        )


def _target_shape(shape, axes):
    shape = list(shape)
    for axis, dim in axes.items():
        shape[axis] = dim.target
    return tuple(shape)


def _axes_note(axes):
    return ", ".join(
        f"ax{a}:{d.describe()}" for a, d in sorted(axes.items()) if not d.is_identity
    )


def _how(kind, axes, scale=1.0):
    parts = _axes_note(axes)
    return (f"{kind} [{parts}]" if parts else "copy") + _scale_note(scale)


def _scale_note(scale):
    return "" if scale == 1.0 else f" x{scale:.4g}"

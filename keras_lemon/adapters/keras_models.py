"""Adapters for users' own Keras models: functional graphs and subclassed models.

Both kinds are traced into one graph (`keras_lemon.graph.trace`) whose roles
are inferred from its structure (`keras_lemon.graph.roles`). Then:

- a **functional** model (also a `keras.Model` subclass built as
  `MyModel(inputs, outputs)`, with nested `Sequential`/`Model` layers) is
  rebuilt node by node: every layer is cloned from its config at the larger
  size, and new blocks are inserted by running clones of a block's layers;
- a **subclassed** model is rebuilt with `from_config` from its config with
  the size keys changed (`hidden_dim`, `num_layers`, ... or `config_keys`),
  and its sublayers are paired with the source's by attribute path (a list
  of blocks maps each target block to the source block it copies).

Custom layers inside either are rebuilt from their config the same way. The
weights are then written by the per-layer rules of `keras_lemon.rules`;
variables that a custom layer or model creates itself (position tables,
class tokens) are expanded by the role of the activation they join.

Finally the expanded model is compared with the source on a probe batch;
an inexact expansion raises instead of returning a silently lossy model.
"""

import contextlib
import dataclasses
import inspect
import math

import keras
import keras_hub
import numpy as np

from keras_lemon import deferred
from keras_lemon.depth import depth_plan
from keras_lemon.graph.roles import GraphRoles
from keras_lemon.graph.roles import node_kind
from keras_lemon.graph.trace import should_inline
from keras_lemon.graph.trace import trace_model
from keras_lemon.index_maps import DimExpansion
from keras_lemon.lossless import check_lossless
from keras_lemon.lossless import dtype_tolerance
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.rules.core_layers import attention_inputs
from keras_lemon.rules.core_layers import attention_shape
from keras_lemon.rules.core_layers import is_rms_norm
from keras_lemon.rules.core_layers import norm_variance_ratio
from keras_lemon.rules.registry import get_rule
from keras_lemon.rules.registry import model_traits
from keras_lemon.sizes import TransformerSizes

try:
    from keras.src.models.functional import Functional
except ImportError:  # pragma: no cover
    Functional = None

#: Config keys recognized as sizes, per role (extend with `config_keys=`).
SIZE_KEYS = {
    "hidden": ("hidden_dim", "hidden_size", "d_model", "embed_dim", "embedding_dim",
               "projection_dim", "model_dim", "width", "dim"),
    "layers": ("num_layers", "depth", "n_layers", "num_blocks", "num_hidden_layers",
               "transformer_layers", "num_transformer_layers", "num_encoder_layers"),
    "heads": ("num_heads", "num_query_heads", "n_heads", "heads", "num_attention_heads",
              "n_head"),
    "intermediate": ("intermediate_dim", "intermediate_size", "mlp_dim", "ff_dim",
                     "ffn_dim", "dim_feedforward", "feedforward_dim", "mlp_units"),
    "head_dim": ("key_dim", "head_dim", "head_size"),
}

#: Config keys of the key/value head count of grouped-query attention.
KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")

#: Config keys of LayerNorm epsilons, scaled for a pre-LN stream that grows
#: by a non-multiple (`keras_lemon.rules.core_layers.expand_layer_norm`).
EPSILON_KEYS = ("layer_norm_epsilon", "layer_norm_eps", "norm_epsilon", "epsilon")


#: Positions per sequence in the probe batch when the input shape leaves them
#: open (a prime, so that a traced sequence axis is unlikely to share its size
#: with a feature axis).
PROBE_LENGTH = 11


def _config_of(model):
    try:
        return model.get_config() or {}
    except Exception:  # a model without a serializable config
        return {}


def is_keras_hub_model(model):
    """A keras-hub backbone or task (functional, built from constructor arguments)."""
    return isinstance(model, (keras_hub.models.Backbone, keras_hub.models.Task))


def is_keras_model(model):
    return isinstance(model, keras.Model)


def is_functional(model):
    return Functional is not None and isinstance(model, Functional)


@dataclasses.dataclass
class Job:
    """One layer (or a container's own variables) to expand."""

    block: object  # target block index, or None outside blocks
    source: object  # the layer whose weights are read
    key_layer: object  # the source layer that locates the target
    dims: dict
    flags: dict
    rule: object = None  # overrides the registered rule


class KerasModelAdapter:
    """Expands a functional or subclassed `keras.Model` (see module docstring).

    Args:
        model: the source model (built).
        config_keys: dict role -> config key (or tuple of keys), roles being
            `"hidden"`, `"layers"`, `"heads"`, `"intermediate"`, `"head_dim"`.
        sample_inputs: optional inputs (NumPy structure) that fix the input
            shapes for tracing a subclassed model and serve as probe.
    """

    def __init__(self, model, config_keys=None, sample_inputs=None):
        if not model.built:
            raise ValueError(
                f"Model '{model.name}' is not built: call it on data (or build "
                "it) before expanding it."
            )
        self.model = model
        self.functional = is_functional(model)
        self.name = f"{type(model).__name__} '{model.name}'"
        self.config_keys = _check_config_keys(config_keys)
        self.sample_inputs = sample_inputs
        self._full_length = False  # see `probe_length`
        try:
            self.graph = trace_model(model, self._input_specs())
        except ValueError:
            # A model whose position table is added whole (keras-hub's SigLIP
            # text encoder) runs only at its full sequence length.
            if not self._has_max_length() or self.sample_inputs is not None:
                raise
            self._full_length = True
            self.graph = trace_model(model, self._input_specs())
        self.roles = GraphRoles(self.graph, self.name)
        self.source_sizes = self._source_sizes()
        # False for `expand_model(exact=False)` (see `DimExpansion.exact`).
        self.exact = True
        self._dims = None  # see `dims`
        self._layout = None
        # Sizes the rebuilt model chose itself (see `fit_to_targets`).
        self._grown_classes = {}
        self._attention_dims = {}

    # --- sizes ---------------------------------------------------------------

    def _input_specs(self):
        # keras-hub models compute masks and positions from the sequence
        # length (`ops.arange(length)`), so they are traced at a fixed one;
        # they are rebuilt from their config, never from the traced shapes.
        fixed = self.probe_length() if is_keras_hub_model(self.model) else None

        def spec(shape, dtype, name=None):
            shape = tuple(fixed if s is None and fixed else s for s in shape[1:])
            return keras.KerasTensor((2,) + shape, dtype=dtype, name=name)

        if self.sample_inputs is not None:
            return keras.tree.map_structure(
                lambda x: spec(np.shape(x), _dtype_of(x)), self.sample_inputs)
        if self.functional:
            return keras.tree.map_structure(
                lambda t: spec(t.shape, t.dtype, t.name), self.model._inputs_struct)
        build = self.model.get_build_config() or {}
        shape = build.get("input_shape")
        if not isinstance(shape, (tuple, list)) or not all(
                isinstance(d, (int, type(None))) for d in shape):
            raise ValueError(
                f"{self.name}: cannot tell its input shape from its build "
                f"config ({build}); pass sample_inputs= (a batch of inputs)."
            )
        return spec(shape, "float32")

    def _source_sizes(self):
        roles = self.roles
        attention = {attention_shape(n.operation) for n in roles.attention_nodes}
        if len(attention) > 1:
            raise ExpansionError(
                f"{self.name}: attention layers with different shapes "
                f"{sorted(attention)} (heads, key_dim, value_dim); keras_lemon "
                "grows models whose attention layers all have one shape."
            )
        has_attention = bool(attention)
        heads, key_dim, value_dim = attention.pop() if attention else (1, roles.hidden, roles.hidden)
        ffn = sorted({roles.size(_key_of_class(roles, c)) for c in roles.ffn_classes})
        return {
            "layers": len(roles.blocks), "hidden": roles.hidden, "heads": heads,
            "key_dim": key_dim, "value_dim": value_dim, "ffn": ffn,
            # Without attention there are no heads to grow with the width.
            "tied_heads": has_attention and heads * key_dim == roles.hidden,
        }

    def transformer_sizes(self):
        s = self.source_sizes
        return TransformerSizes(
            s["layers"] or 1, s["hidden"], s["heads"],
            s["ffn"][0] if s["ffn"] else s["hidden"],
        )

    def check_request(self, layers, intermediate):
        s = self.source_sizes
        if layers is not None and layers != s["layers"] and not self.roles.blocks:
            raise ExpansionError(
                f"{self.name}: its residual connections do not form a chain of "
                "repeated blocks, so no block can be inserted; expand its width only."
            )
        if intermediate is not None and len(s["ffn"]) > 1:
            raise ExpansionError(
                f"{self.name}: its feed-forward layers have several widths "
                f"{s['ffn']}; leave intermediate=None (each grows with hidden)."
            )

    def dims(self, target):
        """Roles (`DimExpansion`s) for target `TransformerSizes`.

        The adapter remembers them: the per-layer dims (`layout`) that
        `jobs`, `build_target`, `fit_to_targets` and `verify` use derive
        from the last dims made here, whatever order those run in.
        """
        self._dims = self._make_dims(target)
        self._target = target
        self._layout = None
        return self._dims

    def _make_dims(self, target):
        s = self.source_sizes
        stream = DimExpansion(s["hidden"], target.hidden, self.roles.stream_pattern, self.exact)
        if s["tied_heads"]:
            key_dim = value_dim = target.hidden // target.heads
            if s["value_dim"] != s["key_dim"]:
                value_dim = s["value_dim"]
        else:
            key_dim, value_dim = s["key_dim"], s["value_dim"]
        if len(s["ffn"]) == 1:
            ffn = {s["ffn"][0]: target.intermediate}
        else:
            ffn = {f: round(f * target.hidden / s["hidden"]) for f in s["ffn"]}
        return {
            "stream": stream,
            "heads": DimExpansion(s["heads"], target.heads, "circular"),
            "key_dim": DimExpansion(s["key_dim"], key_dim, "circular"),
            "value_dim": DimExpansion(s["value_dim"], value_dim, "circular"),
            "ffn": ffn,
        }

    # --- roles of layers -----------------------------------------------------

    def _leaf_dims(self, node, dims, dim_of):
        kind = node_kind(node)
        op = node.operation
        base = {k: v for k, v in dims.items() if k != "ffn"}
        if kind == "opaque":
            raise ExpansionError(
                f"{self.name}: layer {op.name!r} ({type(op).__name__}) has an "
                "expansion rule for keras-hub models but no graph kind, so its "
                "role inside this model is unknown. Register the rule with "
                "keras_lemon.register_rule(..., kind=\"projection\" or \"pointwise\")."
            )
        if kind == "attention":
            query, value, key = attention_inputs(node)
            ins = [dim_of(id(t)) for t in (query, value, key)]
            if len(set(ins)) != 1:
                raise ExpansionError(
                    f"{self.name}: attention layer {op.name!r} reads query, value "
                    f"and key expanded differently ({', '.join(d.describe() for d in ins)}); "
                    "keras_lemon expands self-attention (one input activation)."
                )
            return {**base, "input": ins[0], "output": dim_of(node.outputs[0]),
                    **self._attention_dims.get(id(op), {})}
        inp = dim_of(node.inputs[0]) if node.inputs else None
        out = dim_of(node.outputs[0])
        if kind == "pointwise":
            return {**base, "input": out, "output": out}
        if kind == "positional":
            return {**base, "input": DimExpansion(1, 1), "output": out}
        if kind == "normalization":
            return {**base, "input": inp, "output": out}
        if inp is None:  # an embedding reads integer ids
            inp = DimExpansion(1, 1)
        return {**base, "input": inp, "output": out}

    def layout(self):
        """`(leaf_dims, dim_of)` for the dims of `dims()` and the sizes adopted so far.

        `leaf_dims`: source layer id -> dims of its rule (from its first
        call); `dim_of`: tensor key -> `DimExpansion` of its feature axis.
        Computed once, again after `fit_to_targets` adopts new sizes.
        """
        if self._dims is None:
            raise RuntimeError("KerasModelAdapter.dims(target) must come first.")
        if self._layout is None:
            dims = self._dims
            dim_of = self.roles.class_dims(dims["stream"], dims["ffn"], self._grown_classes)
            self.roles.check(dim_of)
            leaf_dims = {}
            for node in self.roles.leaf_nodes:
                if id(node.operation) not in leaf_dims and node.operation.weights:
                    leaf_dims[id(node.operation)] = self._leaf_dims(node, dims, dim_of)
            stream = dims["stream"]
            # What an output projection reads when the graph does not show it
            # (a backbone alone): the final norm's output, zero extras or copies.
            normalized = DimExpansion(stream.source, stream.target, "circular"
                                      if stream.pattern == "circular" else "zero", stream.exact)
            for node in self.roles.leaf_nodes:
                if not isinstance(node.operation, keras.layers.ReversibleEmbedding) \
                        or id(node.operation) not in leaf_dims:
                    continue
                # A token table used again as the output projection (a causal
                # LM's `embedding(x, reverse=True)`): its reverse kernel reads x.
                found = leaf_dims[id(node.operation)]
                if node.argument(1, "reverse"):
                    found["reverse_input"] = dim_of(node.inputs[0])
                else:
                    found.setdefault("reverse_input", normalized)
            self._layout = leaf_dims, dim_of
        return self._layout

    def jobs(self, dims, specs):
        """Every layer (and container's own variables) to expand, with flags.

        `dims` are those `dims(target)` returned.
        """
        leaf_dims, dim_of = self.layout()
        roles = self.roles
        in_block = {}
        for b, block in enumerate(roles.blocks):
            for layer in block.leaves():
                in_block[id(layer)] = b
        jobs = []
        embedding, factor = self._embedding_rescale()
        stream_scale = self.stream_scale(dims)
        writers, readers = self._stream_writers_and_readers(stream_scale)
        scales = self._tied_output_scales(dim_of, embedding, factor * stream_scale)

        def stream_flags(layer, flags, output_scale=1.0):
            """`flags` with the scales of a scaled stream (see `stream_scale`)."""
            if id(layer) in writers and not flags.get("zero_output"):
                output_scale *= stream_scale
            if output_scale != 1.0:
                flags["output_scale"] = output_scale
            if id(layer) in readers:
                flags["input_scale"] = stream_scale
            return flags

        for node in roles.leaf_nodes:
            layer = node.operation
            if layer.weights and id(layer) not in in_block and not _seen(jobs, layer):
                scale = scales.get(id(layer), 1.0) * (factor if layer is embedding else 1.0)
                flags = stream_flags(layer, {}, scale)
                jobs.append(Job(None, layer, layer, leaf_dims[id(layer)], flags))
        shared = self._shared_block_layers()
        if shared and any(spec.is_new for spec in specs):
            raise ExpansionError(
                f"{self.name}: its blocks share layers ({', '.join(sorted(shared))}: one "
                "set of weights applied at several depths, as ALBERT does), so a new block "
                "cannot get weights of its own without changing the blocks it shares them "
                "with; expand its width only (layers unchanged)."
            )
        for t, spec in enumerate(specs):
            block = roles.blocks[spec.template]
            last_norm = block.units[-1].norm
            projections = {id(n.operation) for u in block.units for n in u.out_projections or ()}
            for layer in block.leaves():
                if layer.name in shared and any(j.key_layer is layer for j in jobs):
                    continue  # a layer shared by several blocks is written once
                flags, source = {}, layer
                if spec.is_new and id(layer) in projections:
                    flags["zero_output"] = True
                if roles.post_ln:
                    norms = [u.norm.operation for u in block.units if u.norm is not None]
                    if last_norm is not None and layer is last_norm.operation:
                        if spec.output_norm_from is None:
                            flags["identity"] = True
                        else:
                            carried = roles.blocks[spec.output_norm_from].units[-1].norm
                            source = carried.operation
                    elif any(layer is n for n in norms) and spec.input_norm_identity:
                        flags["identity"] = True
                scale = 1.0
                if id(source) in scales and t == len(specs) - 1 and not flags.get("identity"):
                    # The last block's output norm feeds a tied output embedding
                    # (RoformerV2's masked-LM head reads the stream directly).
                    scale = scales[id(source)]
                flags = stream_flags(layer, flags, scale)
                jobs.append(Job(t, source, layer, leaf_dims[id(layer)], flags))
        self._check_new_blocks(specs)
        jobs.extend(self._own_variable_jobs(dims, dim_of, specs))
        jobs.extend(self._copy_jobs(dim_of))
        return jobs

    def _shared_block_layers(self):
        """Names of layers with weights that belong to more than one block."""
        seen, shared = set(), set()
        for block in self.roles.blocks:
            ids = {id(layer) for layer in block.leaves()}
            shared |= {layer.name for layer in block.leaves() if id(layer) in seen}
            seen |= ids
        return shared

    @property
    def _backbone(self):
        """The model whose class declares `ModelTraits` (`model_traits` looks there)."""
        return getattr(self.model, "backbone", self.model)

    def stream_scale(self, dims):
        """`c` by which a zero-padded stream is scaled instead of changing epsilons.

        A zero-padded stream of a width `D` that is not a multiple of `d`
        has `mean(x^2)` scaled by `eta^2 = k d / D`; the RMSNorms reading it
        stay exact with `eps' = eta^2 eps`. When the model builds its norms
        with an epsilon that its config cannot change
        (`ModelTraits.fixed_norm_epsilon`: keras-hub's Gemma), the whole
        stream is multiplied by `c = 1 / eta` instead: every layer writing it
        scales its output by `c`, so `mean(x'^2) = c^2 eta^2 mean(x^2) =
        mean(x^2)`, and every RMSNorm reading it sees `c x / sqrt(mean(x^2)
        + eps)` with its own epsilon; its scale is multiplied by `eta`
        (as always) and the output is exact. 1.0 when not needed.
        """
        stream = dims["stream"]
        ratio = norm_variance_ratio(stream)
        if ratio == 1.0 or stream.pattern != "zero" \
                or not model_traits(self.model).fixed_norm_epsilon:
            return 1.0
        return 1.0 / math.sqrt(ratio)

    def _stream_writers_and_readers(self, stream_scale):
        """Ids of the layers that write the stream and of the norms that read it.

        Empty unless the stream is scaled; then a layer with weights other
        than a norm that reads the stream (it would have to undo the scale)
        is refused.
        """
        if stream_scale == 1.0:
            return set(), set()
        roles = self.roles
        writers, readers = set(), set()
        for node in roles.leaf_nodes:
            layer = node.operation
            if not layer.weights:
                continue
            if any(roles.cls(k) in roles.stream_classes for k in node.outputs):
                writers.add(id(layer))
            if any(roles.cls(k) in roles.stream_classes for k in node.inputs):
                if node_kind(node) != "normalization":
                    raise ExpansionError(
                        f"{self.name}: layer {layer.name!r} ({type(layer).__name__}) reads the "
                        "residual stream directly, and this model's norms have an epsilon "
                        "fixed in code, so a width that is not a multiple scales the stream; "
                        f"use a multiple of {self.source_sizes['hidden']}.")
                readers.add(id(layer))
        return writers, readers

    def _embedding_rescale(self):
        """`(embedding layer, factor)` for a model that scales its token embedding.

        `ModelTraits.embedding_scale` (Gemma: `sqrt(hidden_dim)`) is
        recomputed by the rebuilt model: its table is multiplied by
        `source factor / target factor`, so the stream is what it was.
        `(None, 1.0)` otherwise.
        """
        traits = model_traits(self.model)
        if traits.embedding_scale is None:
            return None, 1.0
        owner = self._backbone
        source = traits.embedding_scale(owner.get_config())
        target = traits.embedding_scale(
            self.resized_config(owner, self._dims, self._target, is_model=True))
        return getattr(owner, traits.embedding), source / target

    def depth_plan(self, num_target, placement="interleave", positions=None):
        """`keras_lemon.depth.depth_plan` for this model's blocks and layer pattern.

        A family whose blocks follow a pattern computed from their index
        (`ModelTraits.layer_pattern`) grows by whole periods under
        "interleave"; any plan that would give a block another kind than
        its source (or template) had is refused with the reason.
        """
        blocks = len(self.roles.blocks)
        traits = model_traits(self.model)
        pattern = traits.layer_pattern(self._backbone.get_config()) \
            if traits.layer_pattern else ("",)
        try:
            specs = depth_plan(blocks, num_target, placement, positions, period=len(pattern))
        except ValueError as error:
            if len(pattern) == 1:
                raise
            raise ExpansionError(f"{self.name}: {error}") from error
        wrong = [(t, spec) for t, spec in enumerate(specs)
                 if pattern[t % len(pattern)] != pattern[spec.template % len(pattern)]]
        if wrong:
            t, spec = wrong[0]
            raise ExpansionError(
                f"{self.name}: its blocks follow a pattern of kinds computed from their index "
                f"({', '.join(pattern)}, repeating), which its config cannot set per block, "
                f"and this plan would put block {spec.describe()} "
                f"({pattern[spec.template % len(pattern)]}) at index {t} "
                f"({pattern[t % len(pattern)]}). Use placement='interleave' without positions "
                f"(it inserts whole periods of {len(pattern)} blocks), or positions that keep "
                "every block's index modulo the period.")
        return specs

    def _tied_output_scales(self, dim_of, embedding=None, factor=1.0):
        """`{LayerNorm id: 1/k}` for the LayerNorms that feed tied output embeddings.

        A tied `ReversibleEmbedding(x, reverse=True)` computes `h' . E'`; with
        `k` copies of every unit in both (the pattern of a LayerNorm's output:
        circular, or zero extras) that is `k` times `h . E`. The LayerNorm that
        writes `h` divides its gamma and beta by `k` (LEMON does this for BERT),
        and by `factor` too when the table is `embedding`, rescaled by it
        (`_embedding_rescale`).
        """
        scales = {}
        for node in self.roles.leaf_nodes:
            layer = node.operation
            if not (isinstance(layer, keras.layers.ReversibleEmbedding) and layer.tie_weights
                    and node.argument(1, "reverse")):
                continue
            dim = dim_of(node.inputs[0])
            if dim.is_identity and (layer is not embedding or factor == 1.0):
                continue
            writer = self.roles._writer(node.inputs[0])
            readers = self.roles.consumers.get(writer.outputs[0], []) if writer else []
            if writer is None or node_kind(writer) != "normalization" or len(readers) != 1:
                raise ExpansionError(
                    f"{self.name}: the tied output embedding '{layer.name}' reads an "
                    f"activation expanded {dim.describe()} that is not the output of a "
                    "LayerNormalization read by it alone, so the factor of its copies "
                    "cannot be folded into a norm; untie the output embedding."
                )
            # Zero extras add nothing; inexact partial copies (exact=False)
            # count as the mean number of copies.
            partial = dim.extras and dim.pattern == "circular"
            scales[id(writer.operation)] = (dim.source / dim.target if partial
                                            else 1.0 / dim.copies) / (
                factor if layer is embedding else 1.0)
        return scales

    def fit_to_targets(self, targets):
        """Adopts the sizes that the rebuilt layers chose from their configs.

        A model or custom layer rebuilt from its config derives its
        sublayers' sizes itself: keras-hub's pooler is `Dense(hidden_dim)`,
        keras.io's `TransformerBlock` builds `MultiHeadAttention(key_dim=
        embed_dim)`. Where a target layer's size differs from the plan, the
        target wins: an activation that the plan kept grows circularly (its
        copies are exact through any layer), and an attention layer's head
        size grows (the query is rescaled). Call `jobs` again afterwards.

        Returns:
            True when some size changed.
        """
        changed = False
        leaf_dims, dim_of = self.layout()
        for node in self.roles.leaf_nodes:
            layer = node.operation
            target = _any_target(targets, layer)
            if target is None or not layer.weights:
                continue
            if node_kind(node) == "attention":
                found = {}
                _, source_key, source_value = attention_shape(layer)
                _, target_key, target_value = attention_shape(target)
                for role, size, source in (("key_dim", target_key, source_key),
                                           ("value_dim", target_value, source_value)):
                    planned = leaf_dims[id(layer)][role]
                    if size != planned.target and size >= source:
                        found[role] = DimExpansion(source, size, "circular")
                if found and found != self._attention_dims.get(id(layer)):
                    self._attention_dims[id(layer)] = found
                    changed = True
                continue
            size = _output_size(target)
            out = node.outputs[0]
            planned = dim_of(out)
            if size is not None and planned.is_identity and size > planned.source:
                cls = self.roles.cls(out)
                if self._grown_classes.get(cls) != size:
                    self._grown_classes[cls] = size
                    changed = True
        if changed:
            self._layout = None
        return changed

    def _check_new_blocks(self, specs):
        for spec in specs:
            if not spec.is_new:
                continue
            block = self.roles.blocks[spec.template]
            for unit in block.units:
                if not unit.out_projections:
                    raise ExpansionError(
                        f"{self.name}: a residual branch of block {spec.template} does "
                        "not end in a layer with weights (Dense, attention...), so a "
                        "new copy of the block cannot be made to add exactly 0."
                    )
                if self.roles.post_ln and unit.norm is None:
                    raise ExpansionError(
                        f"{self.name}: a post-LN residual add of block "
                        f"{spec.template} is not followed by its LayerNormalization."
                    )

    def _containers(self):
        """(node, layer) of custom layers / the model that own variables."""
        found, seen = [], set()
        for node in self.graph.nodes:
            op = node.operation
            if node.inlined and id(op) not in seen and _own_variables(op):
                seen.add(id(op))
                found.append((node, op))
        if not self.functional and _own_variables(self.model):
            found.insert(0, (None, self.model))
        return found

    def _own_variable_jobs(self, dims, dim_of, specs):
        jobs = []
        for node, layer in self._containers():
            axes = {}
            for attr, var in _own_variables(layer).items():
                key = id(var)
                if key in self.graph.shapes:
                    d = dim_of(key)
                elif var.shape and var.shape[-1] == dims["stream"].source \
                        and "float" in str(var.dtype):
                    # Used through ops on constants (e.g. a class token
                    # broadcast to the batch): such tables write the stream.
                    d = dims["stream"]
                else:
                    d = DimExpansion(var.shape[-1], var.shape[-1]) if var.shape else None
                axes[attr] = {} if d is None or d.is_identity else {len(var.shape) - 1: d}
            b = None if node is None else self.roles.block_of(node)
            blocks = [None] if b is None else [t for t, s in enumerate(specs) if s.template == b]
            for t in blocks:
                jobs.append(Job(t, layer, layer, dict(dims), {"axes": axes},
                                rule=expand_own_variables))
        return jobs

    def _copy_jobs(self, dim_of):
        jobs = []
        for node in self.roles.opaque:
            op = node.operation
            if isinstance(op, keras.layers.Layer) and op.weights and not node.inlined \
                    and get_rule(op) is None and not _seen(jobs, op):
                jobs.append(Job(None, op, op, {}, {}, rule=copy_unchanged))
        return jobs

    # --- building the target -------------------------------------------------

    def resized_config(self, layer, dims, target, is_model=False):
        """`layer.get_config()` with its size arguments set to the target's."""
        config = layer.get_config()
        s = self.source_sizes
        source_values = {"hidden": s["hidden"], "heads": s["heads"], "head_dim": s["key_dim"],
                         "intermediate": s["ffn"][0] if len(s["ffn"]) == 1 else None,
                         "layers": s["layers"] if is_model else None}
        target_values = {"hidden": target.hidden, "heads": target.heads,
                         "head_dim": dims["key_dim"].target,
                         "intermediate": target.intermediate, "layers": target.layers}
        for role, names in SIZE_KEYS.items():
            names = self.config_keys.get(role, ()) + names
            for key in names:
                value = config.get(key)
                if source_values[role] is not None and isinstance(value, int) \
                        and not isinstance(value, bool) and value == source_values[role]:
                    config[key] = target_values[role]
        if is_model:
            for key, (role, factor) in model_traits(self.model).size_multiples.items():
                if source_values[role] is not None and config.get(key) == factor * source_values[role]:
                    config[key] = factor * target_values[role]
        # Grouped-query attention keeps its groups: KV heads grow with the heads.
        for key in KV_HEAD_KEYS:
            kv = config.get(key)
            if isinstance(kv, int) and not isinstance(kv, bool) and s["heads"] % kv == 0:
                groups = s["heads"] // kv
                if target.heads % groups:
                    raise ExpansionError(
                        f"{self.name}: its {s['heads']} query heads share {kv} key/value "
                        f"heads ({groups} per group); {target.heads} query heads cannot keep "
                        f"the groups. Ask for a multiple of {groups} heads.")
                config[key] = target.heads // groups
        # A pre-LN stream with average extras: every LayerNorm reading it needs
        # epsilon * k d / D (their rule checks it, so a shared key that also
        # sets a norm elsewhere fails there, loudly).
        ratio = norm_variance_ratio(dims["stream"])
        if self.stream_scale(dims) != 1.0:
            ratio = 1.0  # the stream is scaled instead (see `stream_scale`)
        for key in EPSILON_KEYS:
            if ratio != 1.0 and isinstance(config.get(key), float):
                config[key] = config[key] * ratio
        return config

    def build_target(self, dims, target, specs):
        """The target model and `{(block, source layer id): target layer}`.

        A keras-hub backbone is functional but its class builds its graph
        from constructor arguments: like a subclassed model it is rebuilt
        from its config (keeping its class), without the random
        initialization of its variables (`keras_lemon.deferred`; call
        `deferred.finish()` once every variable is written).

        The target is built under the global dtype policy the source was
        built under (`build_time_dtype_policy`): layers that create
        sublayers without passing their `dtype` (common in users' custom
        layers) then get the policy they got in the source, also when the
        source was built under `keras.config.set_dtype_policy(...)` and the
        expansion runs under another global policy.
        """
        with _global_dtype_policy(build_time_dtype_policy(self.model)):
            if self.functional and not self.rebuilt_from_config:
                builder = _FunctionalBuilder(self, dims, target, specs)
                return builder.build(), builder.leaf_targets
            return self._build_subclassed(dims, target, specs)

    @property
    def rebuilt_from_config(self):
        return not self.functional or is_keras_hub_model(self.model)

    def _build_subclassed(self, dims, target, specs):
        model = self.model
        # A keras-hub task holds its sizes in its backbone's config: the
        # backbone is rebuilt at the new size and the task around it.
        task = isinstance(model, keras_hub.models.Task)
        owner = model.backbone if task else model
        config = self.resized_config(owner, dims, target, is_model=True)
        if is_keras_hub_model(owner):
            config = with_missing_arguments(owner, config)
        config = _per_layer_lists(config, len(self.roles.blocks), specs)
        if config == owner.get_config() and target.hidden != self.source_sizes["hidden"]:
            raise ValueError(
                f"{self.name}: its get_config() has no size key with the hidden "
                f"size {self.source_sizes['hidden']} (known names: "
                f"{', '.join(SIZE_KEYS['hidden'])}). Define get_config() with the "
                "constructor's size arguments, or pass config_keys={'hidden': <key>}."
            )
        try:
            if self.functional:  # builds itself: skip the random init
                with deferred.deferred_initialization():
                    new_owner = type(owner).from_config(config)
            else:
                new_owner = type(owner).from_config(config)
            new_model = new_owner
            if task:
                # The task's constructor calls and compiles its backbone, which
                # needs initialized variables (the rules overwrite them).
                deferred.finish()
                task_config = model.get_config()
                task_config.update(backbone=new_owner, preprocessor=model.preprocessor)
                new_model = type(model).from_config(task_config)
        except Exception as error:
            deferred.finish()
            raise ValueError(
                f"{self.name}: could not rebuild it from its config at the new "
                f"size ({type(error).__name__}: {error})."
            ) from error
        if not new_model.built:
            new_model(self.probe_inputs(), training=False)
        targets = {}
        block_list = self._block_list(owner, new_owner, specs)
        _pair(model, new_model, None, targets, block_list, specs)
        return new_model, targets

    def _block_list(self, owner, new_model, specs):
        """`(id(holder), attribute)` of the list of blocks, when the depth changes.

        The holder is the model itself or a layer nested in it (keras-hub's
        `ViTEncoder.encoder_layers`), found by walking source and target
        together as `_pair` does.
        """
        blocks = self.roles.blocks
        if len(specs) == len(blocks) and all(not s.is_new for s in specs):
            return None
        frontier, seen = [(owner, new_model)], set()
        while frontier:
            holder, new_holder = frontier.pop(0)
            if id(holder) in seen or new_holder is None or not should_inline(holder):
                continue
            seen.add(id(holder))
            for name, child, grown in _child_pairs(holder, new_holder):
                if isinstance(child, keras.layers.Layer):
                    frontier.append((child, grown))
                    continue
                if len(child) != len(blocks) or not all(
                        {id(x) for x in block.leaves()} <= {id(x) for x in _layers_in(child[b])}
                        for b, block in enumerate(blocks)):
                    continue
                if len(grown or ()) != len(specs):
                    raise ValueError(
                        f"{self.name}: rebuilt with {len(specs)} layers, its "
                        f"'{name}' list has {len(grown or ())} blocks; is the layers "
                        "config key named as in SIZE_KEYS['layers'] (or config_keys)?"
                    )
                return id(holder), name
        raise ExpansionError(
            f"{self.name}: its blocks are not the elements of one list attribute "
            "of the model, so new blocks cannot be inserted; keep layers unchanged."
        )

    def target_layer(self, targets, job):
        found = targets.get((job.block, id(job.key_layer)))
        found = found if found is not None else targets.get((None, id(job.key_layer)))
        if found is None:
            raise ExpansionError(
                f"{self.name}: layer '{job.key_layer.name}' has no counterpart in "
                "the rebuilt model (does the model create its layers from its config?)."
            )
        return found

    def verify(self, new_model, tolerance=None):
        """Max |diff| / max |output| on a probe batch; raises above `tolerance`.

        The default tolerance is the source's compute dtype's
        (`keras_lemon.lossless.dtype_tolerance`: 1e-4 in float32), for
        post-LN depth growth at least 10x the largest LayerNorm epsilon
        (`LN(LN(z)) = LN(z)` holds to `O(epsilon)`, see `keras_lemon.depth`).
        """
        hint = None
        if self.roles.post_ln:
            eps = [u.norm.operation.epsilon for b in self.roles.blocks for u in b.units
                   if u.norm is not None]
            hint = (
                "If blocks were added: a post-LN model's new blocks rely on LN(LN(z)) = "
                "LN(z) (1 + O(epsilon / var(z))), which with LayerNorm epsilon "
                f"{max(eps, default=0):g} and small pre-norm variances (tiny or weakly "
                "scaled layers) can exceed the tolerance; grow the width only, or check "
                "the error with verify=False.")
        if tolerance is None:
            tolerance = dtype_tolerance(self.model)[0]
            if self.roles.post_ln:
                tolerance = max([tolerance] + [10 * e for e in eps])
        # Outputs that grow with the model (a backbone's hidden states) are
        # compared with the source's expanded by their activation's pattern.
        dim_of = self.layout()[1]
        expand = [None if dim_of(key).is_identity else dim_of(key).expand
                  for key in self.graph.outputs]
        return check_lossless(self.model, new_model, self.probe_inputs(), tolerance,
                              self.name, expand, hint)

    def probe_inputs(self, seed=0):
        """A batch of 2 inputs: token ids for inputs read by embeddings, else normal.

        Integer inputs that no embedding reads are masks: all ones, the
        second row padded at the end. Axes of unknown size (a sequence) get
        `PROBE_LENGTH` positions, fewer if the model's config has a smaller
        `max_sequence_length`.
        """
        if self.sample_inputs is not None:
            return self.sample_inputs
        rng = np.random.default_rng(seed)
        length = self.probe_length()
        flat = []
        for key in self.graph.inputs:
            shape = tuple(length if s is None else s for s in self.graph.shapes[key])
            vocab = self._embedding_vocabulary(key)
            if vocab:
                flat.append(rng.integers(0, vocab, shape).astype("int32"))
            elif "int" in self.graph.dtypes[key] or "bool" in self.graph.dtypes[key]:
                mask = np.ones(shape, "int32")
                if len(shape) == 2 and shape[1] > 1:
                    mask[1, (3 * shape[1]) // 4:] = 0
                flat.append(mask.astype(self.graph.dtypes[key]))
            else:
                flat.append(rng.normal(size=shape).astype("float32"))
        return keras.tree.pack_sequence_as(self.graph.input_structure, flat)

    def probe_length(self):
        """`PROBE_LENGTH`, or the config's `max_sequence_length` if smaller
        (or if the model runs only at that length)."""
        max_length = _config_of(self.model).get("max_sequence_length")
        if self._has_max_length():
            return max_length if self._full_length else min(PROBE_LENGTH, max_length)
        return PROBE_LENGTH

    def _has_max_length(self):
        max_length = _config_of(self.model).get("max_sequence_length")
        return isinstance(max_length, int) and max_length > 0

    def _embedding_vocabulary(self, key):
        consumers = self.roles.consumers
        frontier, sizes, seen = [key], [], set()
        while frontier:
            k = frontier.pop()
            if k in seen:
                continue
            seen.add(k)
            for node in consumers.get(k, []):
                if isinstance(node.operation, keras.layers.Embedding) and not node.argument(1, "reverse"):
                    # (A tied output projection, `embedding(x, reverse=True)`,
                    # reads features, not ids: RoformerV2's mask positions
                    # reach one only as gather indices.)
                    sizes.append(node.operation.input_dim)
                elif node_kind(node) in ("pointwise", "link"):
                    frontier.extend(node.outputs)
        return min(sizes) if sizes else None


class _FunctionalBuilder:
    """Rebuilds a functional model node by node at the target size."""

    def __init__(self, adapter, dims, target, specs):
        self.adapter = adapter
        self.graph = adapter.graph
        self.roles = adapter.roles
        self.dims = dims
        self.target = target
        self.specs = specs
        self.leaf_targets = {}
        self.containers = []
        self._ops = {}
        self._names = {layer.name for layer in adapter.model._flatten_layers()}

    def build(self):
        model = self.adapter.model
        roles = self.roles
        mapping = {}
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name),
            model._inputs_struct)
        for key, tensor in zip(self.graph.inputs, keras.tree.flatten(inputs)):
            mapping[key] = tensor
        for key, value in self.graph.constants.items():
            # A constant that joins a growing activation grows like a bias.
            dim = self.adapter.layout()[1](key)
            if not dim.is_identity:
                expanded = dim.expand(np.asarray(keras.ops.convert_to_numpy(value)))
                dtype = keras.backend.standardize_dtype(value.dtype)
                mapping[key] = keras.ops.convert_to_tensor(expanded, dtype=dtype)
        anchors, copies = {}, {}
        anchor = None
        for t, spec in enumerate(self.specs):
            if spec.is_new:
                copies.setdefault(anchor, []).append((t, spec))
            else:
                anchor = spec.template
                anchors[anchor] = t
        if roles.shared_tops:
            raise ExpansionError(
                f"{self.adapter.name}: {roles.shared_tops[0].operation.name!r} spans several "
                "blocks; new blocks can only be inserted between layers."
            )
        for node in self.graph.nodes:
            if node.parent is not None:
                continue
            b = roles.block_of_top.get(id(node))
            self._call(node, mapping, None if b is None else anchors[b], fresh=False,
                       passthrough=set(self.graph.inputs))
            block = roles.blocks[b] if b is not None else None
            if block is not None and node is block.top_nodes[-1]:
                stream = mapping[node.outputs[0]]
                for t, spec in copies.get(b, []):
                    stream = self._run_copy(roles.blocks[spec.template], stream, t, mapping)
                mapping[node.outputs[0]] = stream
        outputs = keras.tree.map_structure(lambda t: mapping[id(t)], self.graph.output_structure)
        new_model = _functional_like(model, inputs, outputs)
        for t, source, target in self.containers:
            _pair(source, target, t, self.leaf_targets, None, self.specs)
        return new_model

    def _run_copy(self, block, stream, t, mapping):
        local = dict(mapping)
        local[block.input] = stream
        tops = block.top_nodes
        for node in tops:
            self._call(node, local, t, fresh=True, passthrough=set())
        return local[tops[-1].outputs[0]]

    def _call(self, node, mapping, t, fresh, passthrough):
        op = node.operation
        if op is None:
            mapping[node.outputs[0]] = mapping[node.inputs[0]]
            return
        if type(op).__name__ == "ConvertToTensor" and node.inputs and node.inputs[0] in passthrough:
            mapping[node.outputs[0]] = mapping[node.inputs[0]]
            return
        new_op = self._new_op(node, t, fresh)
        args, kwargs = keras.tree.map_structure(
            lambda v: mapping.get(id(v), v), (node.args, node.kwargs))
        result = new_op(*args, **kwargs)
        for key, value in zip(node.outputs, keras.tree.flatten(result)):
            mapping[key] = value

    def _new_op(self, node, t, fresh):
        op = node.operation
        cache = (t if fresh else None, id(op))
        if cache in self._ops:
            return self._ops[cache]
        if isinstance(op, keras.Sequential):
            new = keras.Sequential([self._clone_layer(layer, t, fresh) for layer in op.layers],
                                   name=self._name(op, t, fresh))
        elif isinstance(op, keras.Model):
            new = self._rebuild_nested(node, t, fresh)
        elif isinstance(op, keras.layers.Layer):
            new = self._clone_layer(op, t, fresh, inlined=node.inlined)
        else:
            new = _clone_operation(op, self._name(op, t, fresh))
        self._ops[cache] = new
        return new

    def _clone_layer(self, layer, t, fresh, inlined=None):
        dims = self.adapter.layout()[0].get(id(layer))
        if isinstance(layer, keras.Model):
            node = next(n for n in self.graph.nodes if n.operation is layer)
            return self._new_op(node, t, fresh)
        if dims is not None:
            config = resize_leaf_config(layer, dims)
        elif inlined or (inlined is None and _is_custom(layer)):
            config = self.adapter.resized_config(layer, self.dims, self.target)
        else:
            config = layer.get_config()
        config["name"] = self._name(layer, t, fresh)
        new = from_config_tolerant(type(layer), config)
        if dims is not None:
            self.leaf_targets[(t, id(layer))] = new
        elif _is_custom(layer):
            self.containers.append((t, layer, new))
        elif layer.weights:
            self.leaf_targets[(t, id(layer))] = new
        return new

    def _rebuild_nested(self, node, t, fresh):
        op = node.operation
        dim_of = self.adapter.layout()[1]
        local, inputs = {}, []
        for key in node.inputs:
            shape = self.graph.shapes[key]
            tensor = keras.Input(shape=tuple(shape[1:-1]) + (dim_of(key).target,),
                                 dtype=self.graph.dtypes[key])
            local[key] = tensor
            inputs.append(tensor)
        children = [n for n in self.graph.nodes if n.parent is node]
        for child in children:
            if child.operation is None:
                continue
            self._call(child, local, t, fresh, passthrough=set(node.inputs))
        links = [n for n in children if n.operation is None]
        outputs = [local[n.inputs[0]] for n in links]
        outputs = outputs[0] if len(outputs) == 1 else outputs
        return _functional_like(op, inputs[0] if len(inputs) == 1 else inputs, outputs,
                                name=self._name(op, t, fresh))

    def _name(self, layer, t, fresh):
        if not fresh:
            return layer.name
        name = f"{layer.name}_lemon{t}"
        while name in self._names:
            name += "_"
        self._names.add(name)
        return name


def _per_layer_lists(config, num_blocks, specs):
    """`config` with its per-layer lists following the blocks' copies.

    A config list with one entry per block under a key that names layers
    (SmolLM3's `layer_types`, `rope_layer_enabled_list`) describes each
    block; target block `t` copies source block `specs[t].template`, so it
    takes that block's entry, and every source block keeps its own.
    """
    if not specs or len(specs) == num_blocks and not any(s.is_new for s in specs):
        return config
    config = dict(config)
    for key, value in config.items():
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == num_blocks:
            config[key] = type(value)(value[spec.template] for spec in specs)
    return config


def build_time_dtype_policy(model):
    """The global dtype policy `model` was most likely built under.

    `keras.Input` takes the global policy of its time, whatever `dtype` the
    layers get: a functional model's input layers tell it. A model without
    input layers (subclassed) tells it by its own policy, which is the
    global one unless it was passed a `dtype`.
    """
    inputs = {layer.dtype_policy.name for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.InputLayer)}
    return inputs.pop() if len(inputs) == 1 else model.dtype_policy


@contextlib.contextmanager
def _global_dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def with_missing_arguments(model, config):
    """`config` plus constructor arguments its `get_config()` forgot.

    keras-hub 0.32's `LlamaBackbone.get_config()` leaves out
    `tie_word_embeddings`: rebuilt from it, a tied model would come back
    untied. A boolean constructor argument that is missing from the config
    but kept as an attribute of the same name is added back (only booleans:
    an attribute holding a size the model derived, such as a head size,
    must not pin the target to the source's value).
    """
    config = dict(config)
    for name, parameter in inspect.signature(type(model).__init__).parameters.items():
        if name in config or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        value = getattr(model, name, None)
        if isinstance(value, bool) and value != parameter.default:
            config[name] = value
    return config


def from_config_tolerant(cls, config):
    """`cls.from_config(config)`, also for layers whose `__init__` takes no `**kwargs`.

    Keras records a custom layer's constructor arguments as its config and
    adds `name`, `trainable` and `dtype`; a layer written without `**kwargs`
    (keras.io's `TransformerBlock`) cannot take those back. Then the layer
    is built from its own arguments only and given its name afterwards.
    """
    try:
        return cls.from_config(config)
    except TypeError:
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            raise
        layer = cls.from_config({k: v for k, v in config.items() if k in parameters})
        if "name" in config:
            layer.name = config["name"]
        return layer


def _functional_like(model, inputs, outputs, name=None):
    name = name or model.name
    try:
        return type(model)(inputs=inputs, outputs=outputs, name=name)
    except TypeError:
        return keras.Model(inputs=inputs, outputs=outputs, name=name)


def _clone_operation(op, name):
    """A fresh instance of a `keras.ops` operation, so the source's is untouched."""
    try:
        config = op.get_config()
        config["name"] = name
        return type(op).from_config(config)
    except Exception:  # no serializable config: it is stateless, share it
        return op


def resize_leaf_config(layer, dims):
    """Config of a core layer at the sizes its dims ask for."""
    config = layer.get_config()
    out = dims.get("output")
    if isinstance(layer, keras.layers.Dense):
        config["units"] = out.target
    elif isinstance(layer, keras.layers.Conv2D):
        config["filters"] = out.target
    elif isinstance(layer, keras.layers.Embedding):
        config["output_dim"] = out.target
    elif isinstance(layer, keras.layers.LayerNormalization) or is_rms_norm(layer):
        config["epsilon"] = layer.epsilon * norm_variance_ratio(dims["input"])
    elif isinstance(layer, keras.layers.MultiHeadAttention):
        config["num_heads"] = dims["heads"].target
        config["key_dim"] = dims["key_dim"].target
        if config.get("value_dim") is not None:
            config["value_dim"] = dims["value_dim"].target
        if config.get("output_shape") is not None:
            shape = config["output_shape"]
            config["output_shape"] = out.target if isinstance(shape, int) else \
                tuple(shape[:-1]) + (out.target,)
    else:
        for key in SIZE_KEYS["hidden"] + ("units", "output_dim", "filters"):
            if isinstance(config.get(key), int) and out is not None and config[key] == out.source:
                config[key] = out.target
    return config


def expand_own_variables(layer, ctx):
    """Variables a custom layer or model creates itself, by their role.

    `ctx.flags.axes`: `{attribute: {axis: dim}}`; each variable's feature
    axis is fan-out with the activation it joins (a position table added to
    the stream grows like the stream).
    """
    for attribute, axes in ctx.flags.axes.items():
        ctx.fan_out(attribute, axes)


def copy_unchanged(layer, ctx):
    """A layer without a rule whose activations do not grow: copy its weights."""
    for attribute in _own_variables(layer):
        ctx.fan_out(attribute, {})


def _own_variables(layer):
    """`{attribute: variable}` for the variables `layer` created itself."""
    own = {id(v) for v in list(layer._trainable_variables) + list(layer._non_trainable_variables)}
    return {k: v for k, v in vars(layer).items()
            if isinstance(v, keras.Variable) and id(v) in own}


def _children(layer):
    """(attribute, sublayer or (nested) list of sublayers) in definition order."""
    out, seen = [], set()
    attributes = dict(vars(layer))
    # On the torch backend, sublayers are torch modules, kept in `_modules`.
    attributes.update(attributes.pop("_modules", None) or {})
    for name, value in attributes.items():
        # Bookkeeping lists of Keras (a functional model's `_operations`)
        # are not sublayers the model defines.
        if name in ("_layers", "_functional", "_tracker", "_operations"):
            continue
        if isinstance(value, keras.layers.Layer) and id(value) not in seen:
            seen.add(id(value))
            out.append((name, value))
        elif _is_layer_list(value):
            out.append((name, value))
    return out


def _child_pairs(source, target):
    """`(attribute, source child, target child)`: sublayers paired by attribute.

    A functional model's layers that are no attribute of it (keras-hub
    backbones keep most of theirs only in the graph) are paired by name.
    """
    pairs = [(name, child, getattr(target, name, None)) for name, child in _children(source)]
    if is_functional(source) and is_functional(target):
        paired = {id(child) for _, child, _ in pairs}
        by_name = {layer.name: layer for layer in target.layers}
        pairs += [(layer.name, layer, by_name[layer.name]) for layer in source.layers
                  if id(layer) not in paired and layer.name in by_name]
    return pairs


def _is_layer_list(value):
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, keras.layers.Layer) or _is_layer_list(v) for v in value)


def _layers_in(value):
    """Every layer in a layer or a nested list of layers, sublayers included."""
    if isinstance(value, keras.layers.Layer):
        return value._flatten_layers()
    return [layer for item in value for layer in _layers_in(item)]


def _pair(source, target, t, targets, block_list, specs):
    """Maps each source sublayer to its target counterpart, by attribute path.

    `block_list`: `(id of the layer, attribute)` of the list of blocks when
    the depth changes (the model's own, or its backbone's in a task): target
    block `i` is paired with the source block it copies.
    """
    targets[(t, id(source))] = target
    if not should_inline(source):
        return
    if isinstance(source, keras.Sequential):
        # A Sequential keeps its layers in a list Keras owns, in order.
        _pair_value(list(source.layers), list(target.layers), t, targets, block_list, specs,
                    where=f"{source.name}.layers")
        return
    for name, child, other in _child_pairs(source, target):
        if block_list == (id(source), name):
            for index, target_child in enumerate(other):
                _pair_value(child[specs[index].template], target_child, index, targets,
                            block_list, specs)
        else:
            _pair_value(child, other, t, targets, block_list, specs,
                        where=f"{source.name}.{name}")


def _pair_value(source, target, t, targets, block_list, specs, where=""):
    if isinstance(source, keras.layers.Layer):
        if target is not None:
            _pair(source, target, t, targets, block_list, specs)
        return
    target = list(target or [])
    if len(target) != len(source):
        raise ExpansionError(
            f"'{where}' holds {len(source)} layers in the source and "
            f"{len(target)} in the rebuilt model."
        )
    for a, b in zip(source, target):
        _pair_value(a, b, t, targets, block_list, specs, where)


def _is_custom(layer):
    return not type(layer).__module__.startswith("keras.")


def _any_target(targets, layer):
    """The target counterpart of `layer` (in any block), or None."""
    found = targets.get((None, id(layer)))
    if found is None:
        found = next((v for (_, k), v in targets.items() if k == id(layer)), None)
    return found


def _output_size(layer):
    """The feature size a core layer writes, from its config (None if unknown)."""
    for cls, attribute in ((keras.layers.Dense, "units"), (keras.layers.Embedding, "output_dim"),
                           (keras.layers.Conv2D, "filters")):
        if isinstance(layer, cls):
            return getattr(layer, attribute)
    return None


def _seen(jobs, layer):
    return any(job.key_layer is layer and job.block is None for job in jobs)


def _key_of_class(roles, class_id):
    return next(k for k in roles.graph.shapes if roles.cls(k) == class_id)


def _dtype_of(value):
    dtype = str(getattr(value, "dtype", "float32"))
    return "int32" if "int" in dtype else "float32"


def _check_config_keys(config_keys):
    if config_keys is None:
        return {}
    if not isinstance(config_keys, dict):
        raise TypeError(f"config_keys must be a dict role -> key, got {config_keys!r}.")
    out = {}
    for role, keys in config_keys.items():
        if role not in SIZE_KEYS:
            raise ValueError(
                f"config_keys: unknown role {role!r}; roles are {sorted(SIZE_KEYS)}."
            )
        out[role] = (keys,) if isinstance(keys, str) else tuple(keys)
    return out

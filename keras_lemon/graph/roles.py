"""Inferring the roles of a traced model's dimensions from its graph.

Every tensor's feature (last) axis belongs to an *activation class*: tensors
joined by per-feature operations (dropout, `x + y`, slicing, pooling) share
one. Layers with weights start new classes (a `Dense` writes its own
features; a LayerNorm writes the normalized features of its input). The roles
then follow from the graph, never from names or sizes:

- the **residual stream** is the class of the residual adds, adds whose one
  operand is computed from the other (`x + f(x)`);
- a model is **post-LN** when a LayerNorm maps the stream to the stream
  (`LN(x + f(x))` feeds the next add), **pre-LN** when it maps the stream to
  an activation that only layers read;
- an **FFN intermediate** is a class written by layers that read the
  (normalized) stream and read only by layers that write into the stream;
- attention heads and head sizes come from the attention layers;
- every other class (inputs, classifier outputs, a head whose width happens
  to equal the hidden size) does not grow.

The residual adds also give the **blocks** for depth growth: the adds along
the stream, in order, grouped by the period of their layer pattern
(attention, FFN, attention, FFN... -> blocks of two).
"""

import dataclasses
import functools

import keras

from keras_lemon.graph.feature_ops import feature_behavior
from keras_lemon.graph.feature_ops import touches_feature_axis
from keras_lemon.index_maps import DimExpansion
from keras_lemon.index_maps import FlattenedDim
from keras_lemon.linearity import allows
from keras_lemon.rules.core_layers import attention_inputs
from keras_lemon.rules.core_layers import is_rms_norm
from keras_lemon.rules.core_layers import normalized_dim
from keras_lemon.rules.core_layers import rms_normalized_dim
from keras_lemon.rules.core_layers import same_width_arguments
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.rules.registry import get_kind
from keras_lemon.rules.registry import get_rule

_ADD_OPS = ("Add",)


def node_kind(node):
    """`"link"`, a registered layer kind, a feature-op kind or `"opaque"`."""
    op = node.operation
    if op is None:
        return "link"
    if get_rule(op) is not None:
        return get_kind(op) or "opaque"
    behavior = feature_behavior(op)
    return behavior.kind if behavior else "opaque"


def describe_op(op):
    return f"'{getattr(op, 'name', op)}' ({type(op).__name__})"


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, key):
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


@dataclasses.dataclass(eq=False)
class Unit:
    """One residual connection: `output = [LN](skip + branch)`."""

    add: object
    skip: int
    branch: int
    output: int
    norm: object = None  # post-LN: the LayerNorm node after the add
    out_projections: list = None  # the layer nodes whose outputs sum to the branch
    nodes: list = dataclasses.field(default_factory=list)

    def signature(self):
        return tuple(type(n.operation).__name__ for n in self.nodes if _is_leaf(n))


@dataclasses.dataclass(eq=False)
class Block:
    """Consecutive units that repeat through the network (one transformer block)."""

    units: list
    input: int
    output: int
    nodes: list

    def leaves(self):
        return _unique_layers(n for n in self.nodes if _is_leaf(n))

    @functools.cached_property
    def top_nodes(self):
        """The top-level nodes of the model that make up this block, in order."""
        seen, out = set(), []
        for node in self.nodes:
            top = node.top
            if id(top) not in seen:
                seen.add(id(top))
                out.append(top)
        return out


def _is_leaf(node):
    return node.operation is not None and isinstance(node.operation, keras.layers.Layer) \
        and not node.inlined and bool(node.operation.weights)


def _unique_layers(nodes):
    seen, out = set(), []
    for node in nodes:
        if id(node.operation) not in seen:
            seen.add(id(node.operation))
            out.append(node.operation)
    return out


class GraphRoles:
    """Activation classes, the residual stream and the blocks of a traced graph.

    Args:
        graph: a `keras_lemon.graph.trace.TensorGraph`.
        model_name: used in error messages.
    """

    def __init__(self, graph, model_name):
        self.graph = graph
        self.model_name = model_name
        self.classes = _UnionFind()
        self.norm_input = {}  # LN output class -> LN input class
        self.norm_pairs = []  # (output class, input class) of every norm call
        self.rms_outputs = set()  # classes written by RMSNorms
        self.flatten_input = {}  # Flatten output class -> (outer, input class)
        self.pointwise = []  # (node, linearity)
        self.opaque = []
        self.leaf_nodes = []
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self._join_classes()
        self._ancestors = self._compute_ancestors()
        self.units = self._find_units()
        if not self.units:
            raise ExpansionError(
                f"{model_name}: no residual connection (`x + f(x)`) found, so "
                "there is no residual stream to widen. keras_lemon expands "
                "transformers (pre-LN or post-LN residual blocks)."
            )
        self.stream_classes = {self.cls(k) for u in self.units for k in (u.skip, u.branch)} \
            | {self.cls(u.add.outputs[0]) for u in self.units}
        self.hidden = self._stream_size()
        self.post_ln = self._detect_post_ln()
        # A LayerNorm that writes the stream without reading it (BERT's
        # embedding LayerNorm; Gemma 2's norms of each branch's output)
        # reads an activation that grows as the stream.
        self.norm_into_stream = {i for o, i in self.norm_pairs
                                 if o in self.stream_classes} - self.stream_classes
        self.rms_into_stream = self.norm_into_stream and all(
            o in self.rms_outputs for o, i in self.norm_pairs if i in self.norm_into_stream)
        self.stream_classes |= self.norm_into_stream
        self.ffn_classes = self._find_ffn_classes()
        self.attention_nodes = [n for n in self.leaf_nodes if node_kind(n) == "attention"]
        for unit in self.units:
            self._complete_unit(unit)
        self.blocks = self._group_blocks()
        # Top-level node id -> the (first) block it belongs to; nodes that
        # belong to several blocks (one layer holding two blocks) are listed.
        self.block_of_top, self.shared_tops = {}, []
        for b, block in enumerate(self.blocks):
            for top in block.top_nodes:
                if id(top) in self.block_of_top:
                    self.shared_tops.append(top)
                self.block_of_top.setdefault(id(top), b)

    def block_of(self, node):
        """The block an (inlined) node belongs to, or None.

        The innermost enclosing call whose nodes all lie in one block decides:
        a custom layer inside a block (DINOV2's LayerScale) belongs to that
        block even when one top-level layer holds every block.
        """
        while node is not None:
            blocks = self._blocks_under.get(id(node))
            if blocks is not None and len(blocks) == 1:
                return next(iter(blocks))
            if blocks is not None:
                return None
            node = node.parent
        return None

    @functools.cached_property
    def _blocks_under(self):
        """`{id(node): blocks of the nodes traced inside it, or itself}`."""
        under = {}
        for b, block in enumerate(self.blocks):
            for node in block.nodes:
                while node is not None:
                    under.setdefault(id(node), set()).add(b)
                    node = node.parent
        return under

    def cls(self, key):
        return self.classes.find(key)

    @property
    def stream_pattern(self):
        """How the residual stream's extra units are filled.

        `circular` for post-LN (whole copies only), `zero` for pre-norm models
        whose norms reading the stream are all RMSNorms (zero extras keep
        `mean(x^2)` up to a known factor), `average` for pre-LN LayerNorms.
        """
        if self.post_ln:
            return "circular"
        reading = {o for o, i in self.norm_input.items() if i in self.stream_classes}
        return "zero" if reading and reading <= self.rms_outputs else "average"

    def size(self, key):
        return self.graph.shapes[key][-1]

    # --- classes -------------------------------------------------------------

    def _join_classes(self):
        shapes = self.graph.shapes
        for node in self.graph.nodes:
            if node.inlined:
                continue
            kind = node_kind(node)
            for key in node.inputs + node.outputs:
                self.classes.find(key)
            if node.operation is not None and get_rule(node.operation) is not None:
                self.leaf_nodes.append(node)
            if kind == "link":
                self.classes.union(node.inputs[0], node.outputs[0])
            elif kind == "pointwise":
                behavior = feature_behavior(node.operation)
                linearity = behavior.linearity if behavior else "linear"
                out = node.outputs[0]
                same = [k for k in node.inputs
                        if shapes[k] and shapes[out] and shapes[k][-1] == shapes[out][-1]]
                if (behavior and touches_feature_axis(behavior, node, shapes)) or not same:
                    self.opaque.append(node)
                    continue
                if len(same) > 1 and type(node.operation).__name__ in ("Multiply", "Divide", "TrueDivide"):
                    linearity = "per-feature"
                for key in same:
                    self.classes.union(key, out)
                self.pointwise.append((node, linearity))
            elif kind == "flatten":
                shape = shapes[node.inputs[0]]
                outer = 1
                for size in shape[1:-1]:
                    outer *= size
                self.flatten_input[node.outputs[0]] = (outer, node.inputs[0])
            elif kind == "attention":
                # Arguments projected by the query's kernels grow like the query.
                query, value, _ = attention_inputs(node)
                for name in same_width_arguments(node.operation):
                    other = node.kwargs.get(name)
                    if other is not None and query is not None:
                        self.classes.union(id(other), id(query))
                if query is not None and value is not query and self._learned(id(query)):
                    # A learned query (SigLIP's pooling probe) is read by the
                    # same kind of projection as the keys: it grows like them.
                    self.classes.union(id(query), id(value))
            elif kind == "normalization":
                self.norm_input[node.outputs[0]] = node.inputs[0]
                self.norm_pairs.append((node.outputs[0], node.inputs[0]))
                if is_rms_norm(node.operation):
                    self.rms_outputs.add(node.outputs[0])
            elif kind == "opaque":
                self.opaque.append(node)
        for constant, variable in self.graph.variable_of_constant.items():
            self.classes.union(variable, constant)
        # Re-key the relations by class now that every union is done.
        self.norm_input = {self.cls(o): self.cls(i) for o, i in self.norm_input.items()}
        self.norm_pairs = [(self.cls(o), self.cls(i)) for o, i in self.norm_pairs]
        self.rms_outputs = {self.cls(o) for o in self.rms_outputs}
        self.flatten_input = {self.cls(o): (n, self.cls(i)) for o, (n, i) in self.flatten_input.items()}

    def _learned(self, key):
        """A tensor made of weights alone: a constant or a variable, no node's output."""
        return key in self.graph.constants or (
            key not in self.producers and key not in self.graph.inputs)

    def _compute_ancestors(self):
        ancestors = {}
        for node in self.graph.nodes:
            if node.inlined:
                continue
            upstream = set()
            # A positional layer reads only its input's shape: its output
            # is not computed from the input (`x + position(x)` is no residual).
            for key in ([] if node_kind(node) == "positional" else node.inputs):
                upstream |= ancestors.get(key, set())
                upstream.add(key)
            for key in node.outputs:
                ancestors[key] = upstream
        return ancestors

    def is_ancestor(self, a, b):
        return a in self._ancestors.get(b, ())

    # --- residual units ------------------------------------------------------

    def _find_units(self):
        units = []
        for node in self.graph.nodes:
            op = node.operation
            if node.inlined or op is None or type(op).__name__ not in _ADD_OPS:
                continue
            if len(node.inputs) != 2:
                continue
            a, b = node.inputs
            if self.is_ancestor(a, b):
                units.append(Unit(node, a, b, node.outputs[0]))
            elif self.is_ancestor(b, a):
                units.append(Unit(node, b, a, node.outputs[0]))
        return units

    def _stream_size(self):
        sizes = {self.size(u.add.outputs[0]) for u in self.units}
        if len(sizes) != 1:
            raise ExpansionError(
                f"{self.model_name}: residual connections of different widths "
                f"{sorted(sizes)}; keras_lemon expands one residual stream."
            )
        return sizes.pop()

    def _detect_post_ln(self):
        # A LayerNorm that maps the stream back into the stream (its output
        # is a residual operand) makes the model post-LN. Other LayerNorms
        # reading the stream (a final one before the head) then normalize a
        # circular stream with no partial copy, which stays circular: exact.
        return any(i in self.stream_classes and o in self.stream_classes
                   for o, i in self.norm_input.items())

    def _find_ffn_classes(self):
        """Classes written from the stream and read only by writers into the stream."""
        expanded = set(self.stream_classes) | {
            o for o, i in self.norm_input.items() if i in self.stream_classes}
        readers = {}
        for node in self.graph.nodes:
            if node.inlined or node.operation is None:
                continue
            for key in node.inputs:
                readers.setdefault(self.cls(key), []).append(node)
        ffn = set()
        for node in self.leaf_nodes:
            if node_kind(node) != "projection" or not node.inputs:
                continue
            out = self.cls(node.outputs[0])
            if out in self.stream_classes or self.cls(node.inputs[0]) not in expanded:
                continue
            nodes = readers.get(out, [])
            writes = [n for n in nodes if n.operation is not None and get_rule(n.operation)
                      and node_kind(n) == "projection"]
            others = [n for n in nodes if n not in writes and node_kind(n) not in ("pointwise", "link")]
            if writes and not others and all(self.cls(n.outputs[0]) in self.stream_classes for n in writes):
                ffn.add(out)
        return ffn

    def _complete_unit(self, unit):
        if self.post_ln:
            norm = self._follow_to_norm(unit.output)
            if norm is not None:
                unit.norm, unit.output = norm, norm.outputs[0]
        unit.out_projections = self._writers(unit.branch)
        inside = self._ancestors.get(unit.output, set()) | {unit.output}
        before = self._ancestors.get(unit.skip, set()) | {unit.skip}
        for node in self.graph.nodes:
            if node.inlined or not node.outputs:
                continue
            out = node.outputs[0]
            if out in inside and out not in before and (
                unit.skip in self._ancestors.get(out, ()) or not node.inputs
            ):
                unit.nodes.append(node)

    def _follow_to_norm(self, key):
        for _ in range(8):
            readers = self.consumers.get(key, [])
            if len(readers) != 1:
                return None
            node = readers[0]
            if node_kind(node) == "normalization":
                return node
            if node_kind(node) not in ("pointwise", "link"):
                return None
            key = node.outputs[0]
        return None

    def _writer(self, key):
        """The layer node whose output reaches `key` through per-feature ops."""
        writers = self._writers(key)
        return writers[0] if writers and len(writers) == 1 else None

    def _writers(self, key, budget=16):
        """The layer nodes whose outputs reach `key` through per-feature ops.

        A sum of computed terms has one writer per term (GPT-NeoX's parallel
        residual adds attention and feed-forward outputs); None when a path
        ends anywhere but in a layer with weights.
        """
        node = self.producers.get(key)
        if node is None or budget == 0:
            return None
        if node_kind(node) == "normalization" and self.cls(node.inputs[0]) in \
                self.norm_into_stream and self.cls(key) in self.rms_outputs:
            # An RMSNorm of the branch's output (Gemma 2's post-attention
            # norm) writes the branch: a new block zeroes its scale. (Zeroing
            # the projection before it would not do: cancelling copies sum
            # to 0 only up to round-off, which the norm scales up to O(1).)
            return [node]
        if node_kind(node) not in ("pointwise", "link") or not node.inputs:
            return [node] if _is_leaf(node) else None
        same = [k for k in node.inputs if self.cls(k) == self.cls(key)]
        name = type(node.operation).__name__ if node.operation is not None else ""
        if len(same) > 1 and name == "Multiply":
            # A per-feature product with a weight of the layer's own
            # (DINOV2's LayerScale `x * lambda1`): follow the computed
            # operand; a zero branch stays zero through it.
            same = [k for k in same if k in self.producers]
        if len(same) > 1 and name in _ADD_OPS and all(k in self.producers for k in same):
            found = []
            for term in same:
                writers = self._writers(term, budget - 1)
                if writers is None:
                    return None
                found += writers
            return found
        if len(same) != 1:
            return None
        return self._writers(same[0], budget - 1)

    # --- blocks --------------------------------------------------------------

    def _group_blocks(self):
        # Units that feed each other form chains; the blocks are the longest
        # chain (a pooling head with a residual of its own, as SigLIP's
        # vision encoder has, stays outside). Two chains of the same length
        # (two stacks) leave no blocks: which one to deepen is not clear.
        chains = [[self.units[0]]]
        for a, b in zip(self.units, self.units[1:]):
            if b.skip == a.output or self._same_tensor(a.output, b.skip):
                chains[-1].append(b)
            else:
                chains.append([b])
        lengths = sorted((len(c) for c in chains), reverse=True)
        if len(lengths) > 1 and lengths[0] == lengths[1]:
            return []
        units = max(chains, key=len)
        signatures = [u.signature() for u in units]
        n = len(units)
        for period in range(1, n + 1):
            if n % period == 0 and all(signatures[j] == signatures[j % period] for j in range(n)):
                break
        blocks = []
        for start in range(0, n, period):
            group = units[start:start + period]
            nodes = []
            for unit in group:
                nodes.extend(x for x in unit.nodes if x not in nodes)
            blocks.append(Block(group, group[0].skip, group[-1].output, nodes))
        return blocks

    def _same_tensor(self, a, b):
        """`b` is `a` passed on through links (into or out of containers)."""
        key = b
        for _ in range(8):
            node = self.producers.get(key)
            if node is None or node.operation is not None:
                return False
            key = node.inputs[0]
            if key == a:
                return True
        return False

    # --- dims ----------------------------------------------------------------

    def class_dims(self, stream, intermediate, grown=None):
        """A function: tensor key -> `DimExpansion` of its feature axis.

        Args:
            stream: `DimExpansion` of the residual stream.
            intermediate: dict FFN source width -> target width.
            grown: optional dict class -> target width, for activations
                that are neither the stream nor an FFN width but that the
                rebuilt model sizes from its config anyway (a pooler
                `Dense(hidden_dim)`): they grow circularly.
        """
        memo, grown = {}, grown or {}

        def dim(key):
            c = self.cls(key)
            if c in memo:
                return memo[c]
            if c in self.stream_classes:
                result = stream
            elif c in self.norm_input:
                normalized = rms_normalized_dim if c in self.rms_outputs else normalized_dim
                result = normalized(dim(self.norm_input[c]))
                if result is None:
                    raise ExpansionError(
                        f"{self.model_name}: a LayerNormalization reads an "
                        f"activation expanded {dim(self.norm_input[c]).describe()}, "
                        "which no LayerNorm can normalize exactly; use a width "
                        f"that is a multiple of {self.hidden}."
                    )
            elif c in self.flatten_input:
                outer, inner = self.flatten_input[c]
                inner = dim(inner)
                size = self.size(key)
                result = DimExpansion(size, size) if inner.is_identity else FlattenedDim(outer, inner)
            elif c in self.ffn_classes:
                size = self.size(key)
                result = DimExpansion(size, intermediate[size], "circular")
            elif c in grown:
                # Circular like a post-LN stream, and as inexact as it.
                result = DimExpansion(self.size(key), grown[c], "circular", stream.exact)
            else:
                # A feature axis of unknown size (a mask's sequence axis) is
                # not a width: it never grows.
                size = self.size(key) or 1
                result = DimExpansion(size, size)
            memo[c] = result
            return result

        return dim

    def check(self, dim):
        """Raises for operations that cannot pass an expanded activation exactly."""
        stream = dim(next(iter(self.units)).skip)
        # RMSNorms over zero extras give zero extras: a zero-padded stream may
        # be written by them.
        exact_norms = self.rms_into_stream and stream.pattern == "zero"
        if self.norm_into_stream and not self.post_ln and stream.extras and not exact_norms:
            raise ExpansionError(
                f"{self.model_name}: a LayerNormalization writes the residual stream of this "
                f"pre-LN model (its embedding LayerNorm), so the stream would grow "
                f"{stream.describe()} with extras that are zero, not the average the "
                f"blocks' LayerNorms need; only a hidden size that is a multiple of "
                f"{stream.source} is exact (e.g. {2 * stream.source})."
            )
        for node in self.opaque:
            keys = node.inputs + node.outputs
            grown = [k for k in keys if not dim(k).is_identity]
            if grown and node.operation is not None:
                op = node.operation
                owner = node.parent.operation if node.parent is not None else None
                where = ""
                if isinstance(owner, keras.layers.Layer) and not isinstance(owner, keras.Model):
                    where = f" inside layer {describe_op(owner)}"
                    op_for_rule = owner
                else:
                    op_for_rule = op
                advice = (
                    "register a rule for it with keras_lemon.register_rule("
                    f"{type(op_for_rule).__name__}, rule, kind=...)"
                    if isinstance(op_for_rule, keras.layers.Layer)
                    else "compute it with per-feature keras.ops (or move it out of the stream)"
                )
                raise ExpansionError(
                    f"{self.model_name}: operation {describe_op(op)}{where} reads or writes an "
                    f"activation that grows ({dim(grown[0]).describe()}), and keras_lemon "
                    "does not know how it treats features (it may mix or reduce them), "
                    f"so the expansion could not be exact. To fix: {advice}."
                )
        for node, linearity in self.pointwise:
            d = dim(node.outputs[0])
            if d.extras and not allows(linearity, d.pattern):
                raise ExpansionError(
                    f"{self.model_name}: operation {describe_op(node.operation)} is "
                    f"{linearity}, but its activation is expanded {d.describe()}: "
                    f"'{d.pattern}' extras survive only "
                    + ("linear maps" if d.pattern == "average" else "maps with f(0) = 0")
                    + f". Use a hidden size that is a multiple of {d.source}."
                )

"""Tracing a Keras model into one flat graph of layer calls and tensor ops.

A functional model already is a graph, but its nested models and custom
layers are opaque nodes, and a subclassed model has no graph at all. Both are
opened the same way: a layer's Python `call` is run on symbolic
`keras.KerasTensor`s, so that every sublayer call and every `keras.ops`
operation in it (`x + y` included) records a node. Nodes whose operation is a
nested model or a custom layer without an expansion rule are opened in turn
("inlined"), down to layers that have a rule (Dense, LayerNormalization,
MultiHeadAttention...) and to stateless operations.

Two kinds of values enter the graph without being symbolic, and are linked so
that their roles can be inferred too:

- variables a layer uses directly (`x + self.position_table`),
- outputs of sublayers called on constants while tracing (a position
  `Embedding` called on `ops.arange(n)`), recorded by wrapping the sublayers'
  `call` for the duration of the trace.

Tracing calls layers symbolically, which appends nodes to their
`_inbound_nodes`; those lists are restored afterwards so that the traced
model is left exactly as it was. A sublayer that returns `None` beside its
tensors (keras-hub's DeiT blocks return `(x, None)` when no attention scores
are asked for) works when Keras builds the model, whose nested calls are not
symbolic, but not as a symbolic call: while tracing, such `None`s are left
out of the recorded node.
"""

import contextlib
import dataclasses
import functools
import inspect

import keras
import numpy as np
from keras.src import backend as keras_backend
from keras.src.layers import layer as keras_layer_module
from keras.src.ops import numpy as keras_numpy_ops
from keras.src.ops.node import Node as KerasNode

from keras_lemon.graph.feature_ops import feature_behavior
from keras_lemon.rules.registry import get_kind
from keras_lemon.rules.registry import get_rule


@dataclasses.dataclass(eq=False)
class TraceNode:
    """One call of an operation in the traced graph.

    Attributes:
        operation: the layer or `keras.ops` operation called.
        args, kwargs: its arguments (KerasTensors, variables, constants).
        inputs: keys of the arguments that are graph tensors.
        outputs: keys of its outputs.
        parent: the inlined node this call was traced inside (None at the
            top level of the model).
        inlined: True when the call was opened into its own nodes.
    """

    operation: object
    args: tuple
    kwargs: dict
    inputs: list
    outputs: list
    parent: object = None
    inlined: bool = False

    @property
    def top(self):
        """The top-level node this call belongs to."""
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def argument(self, position, name):
        """The argument passed at `position` or as `name`, or None."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if len(self.args) > position else None


class TensorGraph:
    """The traced graph: nodes in topological order and their tensors.

    Tensors are keyed by `id()` of the traced object (kept alive here). An
    inlined node's outputs are tied to what its body returned by *link*
    nodes (`operation` None): the same values under two keys.
    """

    def __init__(self):
        self.nodes = []
        self.shapes = {}
        self.dtypes = {}
        self.inputs = []
        self.outputs = []
        self.output_structure = None
        self.input_structure = None
        self._keep = []
        self._eager = {}
        self.constants = {}  # key -> a constant array used by an operation
        self.variables = []  # the traced model's variables
        self.variable_of_constant = {}  # constant key -> key of the variable it repeats
        self._parents = [None]
        self._computing_specs = 0  # > 0 while a sublayer computes its output spec

    def key(self, value):
        key = id(value)
        if key not in self.shapes:
            self.shapes[key] = tuple(value.shape)
            self.dtypes[key] = str(getattr(value, "dtype", "float32"))
            self._keep.append(value)
        return key

    def is_tensor(self, value):
        return isinstance(value, keras.KerasTensor) or isinstance(value, keras.Variable) \
            or id(value) in self._eager or self._record_constant(value)

    def _record_constant(self, value):
        """Keys a float array baked into the graph (keras.io's position table
        `Embedding(...)(ops.arange(n))`, computed while the model was built):
        it joins the activation it is added to, and grows like a bias."""
        if isinstance(value, (keras.KerasTensor, keras.Variable)):
            return False
        if not (isinstance(value, np.ndarray) or keras.ops.is_tensor(value)):
            return False
        if len(value.shape) < 1 or "float" not in str(value.dtype):
            return False
        key = self.key(value)
        self.constants[key] = value
        variable = self._variable_broadcast_to(value)
        if variable is not None:
            self.variable_of_constant[key] = self.key(variable)
        return True

    def _variable_broadcast_to(self, value):
        """The model variable that `value` merely broadcasts, or None.

        A learned token repeated over the batch while tracing
        (`ops.repeat(self.probe, batch, axis=0)` in SigLIP's attention
        pooling, `ops.tile(self.class_token, ...)` in DeiT) becomes a
        constant; its numbers say which variable it is, so the variable
        grows with the activation the constant joins.
        """
        array = None
        for variable in self.variables:
            if len(variable.shape) != len(value.shape) or any(
                    v not in (1, c) for v, c in zip(variable.shape, value.shape)):
                continue
            if array is None:
                array = np.asarray(keras.ops.convert_to_numpy(value))
            source = keras.ops.convert_to_numpy(variable)
            if np.array_equal(np.broadcast_to(source, array.shape), array):
                return variable
        return None

    def producers(self):
        """Map tensor key -> the (non-inlined) node that produces it."""
        out = {}
        for node in self.nodes:
            if not node.inlined:
                for key in node.outputs:
                    out[key] = node
        return out

    def consumers(self):
        out = {}
        for node in self.nodes:
            if not node.inlined:
                for key in node.inputs:
                    out.setdefault(key, []).append(node)
        return out

    # --- tracing -------------------------------------------------------------

    def trace(self, layer, args, kwargs, parent=None):
        """Runs `layer.call` on symbolic arguments and records its nodes."""
        stop = {id(t) for t in keras.tree.flatten((args, kwargs))
                if isinstance(t, keras.KerasTensor)}
        self._parents.append(parent)
        try:
            outputs = layer.call(*args, **_accepted(layer.call, kwargs))
        finally:
            self._parents.pop()
        for node in _nodes_between(outputs, stop):
            self._add(node, parent)
        return outputs

    def _add(self, keras_node, parent):
        op = keras_node.operation
        arguments = keras_node.arguments
        values = keras.tree.flatten((arguments.args, arguments.kwargs))
        node = TraceNode(
            operation=op, args=arguments.args, kwargs=arguments.kwargs,
            inputs=[self.key(v) for v in values if self.is_tensor(v)],
            outputs=[self.key(t) for t in keras_node.outputs], parent=parent,
        )
        self.nodes.append(node)
        if should_inline(op):
            node.inlined = True
            inner = [v for v in keras.tree.flatten(
                self.trace(op, arguments.args, arguments.kwargs, node)) if v is not None]
            if len(inner) != len(node.outputs):
                raise ValueError(
                    f"Tracing '{op.name}' ({type(op).__name__}) returned "
                    f"{len(inner)} tensors, its node has {len(node.outputs)}."
                )
            # The container's outputs are its body's outputs: a link node
            # (operation None) makes that an identity edge of the graph.
            for outer, value in zip(node.outputs, inner):
                self.nodes.append(TraceNode(
                    operation=None, args=(), kwargs={}, inputs=[self.key(value)],
                    outputs=[outer], parent=node,
                ))

    @contextlib.contextmanager
    def recording_eager_calls(self, layer):
        """Records sublayers of `layer` called on constants as nodes."""
        wrapped = []
        for sub in layer._flatten_layers(include_self=False, recursive=True):
            if "call" in vars(sub):
                continue
            original = sub.call

            def call(*args, __sub=sub, __original=original, **kwargs):
                result = __original(*args, **kwargs)
                flat = keras.tree.flatten((args, kwargs))
                if flat and not self._computing_specs \
                        and not any(isinstance(v, keras.KerasTensor) for v in flat) \
                        and all(_is_concrete(v) for v in flat):
                    self._record_eager(__sub, args, kwargs, result)
                return result

            call.__wrapped__ = original  # its signature is the original's
            sub.call = call
            sub.compute_output_spec = self._counting_spec_calls(_spec_from_call(sub))
            wrapped.append(sub)
        try:
            yield
        finally:
            for sub in wrapped:
                del sub.call
                del sub.compute_output_spec

    def _counting_spec_calls(self, compute_output_spec):
        """`compute_output_spec` that marks the calls it makes as not the graph's.

        A symbolic sublayer call computes its output spec by running `call`
        on placeholders. The torch backend runs it on real zero tensors on
        the CPU when its meta tensors fail (keras-hub's rotary attention):
        those inner calls are concrete, yet they are not constants the
        traced layer uses, and must not be recorded as eager nodes.
        """
        def counted(*args, **kwargs):
            self._computing_specs += 1
            try:
                return compute_output_spec(*args, **kwargs)
            finally:
                self._computing_specs -= 1

        return counted

    def _record_eager(self, layer, args, kwargs, result):
        outputs = keras.tree.flatten(result)
        for value in outputs:
            self._eager[id(value)] = layer
        self.nodes.append(TraceNode(
            operation=layer, args=args, kwargs=kwargs, inputs=[],
            outputs=[self.key(v) for v in outputs], parent=self._parents[-1],
        ))


def _spec_from_call(layer):
    """`layer.compute_output_spec`, or on a `TypeError` the one that runs `call`.

    keras-hub builds its models without symbolic sublayer calls, so a layer
    may take arguments that its `compute_output_spec` does not
    (`CachedMultiHeadAttention(cache=...)` inherits MultiHeadAttention's).
    The trace calls sublayers symbolically; then Keras' generic spec, which
    runs `call` on placeholders, answers instead.
    """
    original = layer.compute_output_spec

    def compute_output_spec(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except TypeError:
            # Run `call` on placeholders (not the layer's own compute_output_shape,
            # which may expect other arguments, as SmolLM3's attention does);
            # arguments that are not tensors (a dtype policy) are bound first.
            tensors = {k: v for k, v in kwargs.items()
                       if all(isinstance(t, keras.KerasTensor) or t is None
                              for t in keras.tree.flatten(v))}
            call = functools.partial(
                layer.call, **{k: v for k, v in kwargs.items() if k not in tensors})
            return keras_backend.compute_output_spec(call, *args, **tensors)

    return compute_output_spec


def _accepted(call, kwargs):
    """`kwargs` less those `call` does not take.

    Keras drops `training` (and other call-context arguments) for a layer
    whose `call` has no such parameter, but records them in the node.
    """
    try:
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


def _is_concrete(value):
    """A real backend value (not a tracer of `compute_output_spec`)."""
    if isinstance(value, (int, float, bool, str)) or value is None:
        return True
    try:
        keras.ops.convert_to_numpy(value)
        return True
    except Exception:  # jax tracers, TF graph tensors, torch meta tensors
        return False


def _nodes_between(outputs, stop):
    """Keras nodes from `outputs` back to the tensors in `stop`, topologically."""
    order, seen = [], set()

    def visit(tensor):
        history = getattr(tensor, "_keras_history", None)
        if id(tensor) in stop or history is None or history.operation is None:
            return
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            return
        seen.add(id(node))
        for arg in node.arguments.keras_tensors:
            visit(arg)
        order.append(node)

    for tensor in keras.tree.flatten(outputs):
        visit(tensor)
    return order


def should_inline(op):
    """Nested models and custom layers without a rule are opened up.

    So are composite layers whose rule has no graph kind (a rule that only
    another rule calls, registered without `kind=`): inside a traced graph
    their sublayers and operations say more than one opaque node.
    """
    if isinstance(op, keras.Model):
        return True
    if not isinstance(op, keras.layers.Layer):
        return False
    if get_rule(op) is not None:
        return get_kind(op) is None and bool(op._flatten_layers(include_self=False))
    if feature_behavior(op) is not None:
        return False
    return not type(op).__module__.startswith("keras.")


class _NodeWithoutNone(KerasNode):
    """A Keras `Node` that leaves `None` outputs out (see the module docstring)."""

    def __init__(self, operation, call_args=None, call_kwargs=None, outputs=None):
        if outputs is not None:
            outputs = [x for x in keras.tree.flatten(outputs) if x is not None]
        super().__init__(operation, call_args, call_kwargs, outputs)


@contextlib.contextmanager
def _nodes_without_none():
    """Symbolic layer calls record `_NodeWithoutNone`s while the trace runs."""
    original = keras_layer_module.Node
    keras_layer_module.Node = _NodeWithoutNone
    try:
        yield
    finally:
        keras_layer_module.Node = original


#: Keras ops whose symbolic result is sparse when an operand is a concrete
#: array (it has no `.sparse`, and Keras assumes it may be sparse).
_SPARSE_BY_DEFAULT = (keras_numpy_ops.Multiply, keras_numpy_ops.Matmul)


@contextlib.contextmanager
def _dense_constants():
    """Concrete arrays count as dense in `x * constant` while the trace runs.

    Gemma multiplies its embedding by `ops.cast(ops.sqrt(hidden_dim), ...)`,
    a concrete array; Keras then marks the symbolic product sparse, and the
    next sublayer traced on it (an RMSNorm computing `x + eps`) fails. Keras
    builds the model without that symbolic call, so it does not see this.
    """
    originals = {op: op.compute_output_spec for op in _SPARSE_BY_DEFAULT}

    def dense(value):
        if isinstance(value, keras.KerasTensor) or not hasattr(value, "shape") \
                or not hasattr(value, "dtype"):
            return value
        return keras.KerasTensor(tuple(value.shape), dtype=keras.backend.standardize_dtype(
            value.dtype), sparse=False)

    def patched(original):
        def compute_output_spec(self, x1, x2):
            return original(self, dense(x1), dense(x2))
        return compute_output_spec

    for op, original in originals.items():
        op.compute_output_spec = patched(original)
    try:
        yield
    finally:
        for op, original in originals.items():
            op.compute_output_spec = original


@contextlib.contextmanager
def preserved_nodes(model):
    """Restores the node lists of every operation in `model` on exit."""
    ops = {}

    def collect(layer):
        for op in [layer, *layer._flatten_layers(include_self=False, recursive=True)]:
            ops[id(op)] = op
            for inner in getattr(op, "operations", None) or []:
                ops.setdefault(id(inner), inner)

    collect(model)
    saved = {k: (list(op._inbound_nodes), list(op._outbound_nodes)) for k, op in ops.items()}
    try:
        yield
    finally:
        for k, op in ops.items():
            op._inbound_nodes[:] = saved[k][0]
            op._outbound_nodes[:] = saved[k][1]


def trace_model(model, input_specs):
    """Traces `model` on symbolic inputs shaped like `input_specs`.

    Args:
        model: a built `keras.Model` (functional or subclassed).
        input_specs: a structure of `keras.KerasTensor` matching what
            `model.call` takes as its first argument.

    Returns:
        A `TensorGraph`.
    """
    graph = TensorGraph()
    graph.variables = list(model.weights)
    graph.input_structure = input_specs
    graph.inputs = [graph.key(t) for t in keras.tree.flatten(input_specs)]
    with preserved_nodes(model), graph.recording_eager_calls(model), _nodes_without_none(), \
            _dense_constants():
        outputs = graph.trace(model, (input_specs,), {})
    graph.output_structure = outputs
    graph.outputs = [graph.key(t) for t in keras.tree.flatten(outputs)]
    return graph

"""`expand_optimizer`: carry an optimizer's state through an expansion.

Training a grown model with a fresh optimizer restarts Adam cold: its
moments are zero and every weight moves by about the learning rate at once,
whatever its gradient. `expand_optimizer` instead builds an optimizer for the
expanded model whose state (step count, momenta, second moments) is the
source optimizer's, expanded with the expansion's own index maps.

The rule, derived once for every expansion kind:

- *The maps.* With equal shares (no noise) every expansion rule is linear in
  the source weights, and every target entry `j` that the rules fill from a
  single source entry is a scaled copy: `W'_j = s_j W_{pi(j)}`. A copy of an
  output unit has `s = 1`, a weight split over `n` copies of its input
  `s = 1/n`, a LayerNorm gain on an averaged stream `s = eta`, a query
  kernel whose head size grows the split times `sqrt(H/h)`. The maps are
  read off the rules themselves: they run on probe arrays (ones, the digits
  of each source entry's index, and a random check) instead of the weights.
- *The gradients.* The expanded model computes the source's function for
  every source weight `W`: `L'(E W) = L(W)`, so `E^T g' = g`. The copies of
  a source entry `i` are interchangeable (permuting them permutes the
  model's units), so they all have the same `s_j c_j` when the expanded
  gradient is `g'_j = c_j g_{pi(j)}`; with `N_i` entries copying `i`,
  `sum_j s_j c_j = 1` gives `c_j = 1 / (s_j N_i)`. A copied output unit
  (`n` copies, each read with a share `1/n`) gets `c = 1/n`; a split input
  weight gets `c = 1`: the gradient of a copy does not depend on its share.
- *The state.* A first moment (Adam's `m`, SGD's momentum, Lion's momentum)
  is an average of gradients, so `m'_j = c_j m_{pi(j)}`; a second moment
  (Adam's `v`, Adagrad's sum of squares, AMSGrad's max) of squared ones,
  `v'_j = c_j^2 v_{pi(j)}`; Adamax's `u` (a max of `|g|`) `|c_j| u`. This
  is exactly the state the optimizer would hold had the large model been
  trained all along in the subspace where copies stay copies, and Adam's
  first update after the expansion, `c m / (|c| sqrt(v))`, moves every copy
  as the source's update would have moved the source entry. (For an equal
  2x split of both axes `c = 1/2`: staged training's "halve `m`, quarter
  `v`".) With LEMON's unequal random shares the copies' gradients differ a
  little from `c g`; the equal-share state is their common expectation.
  A width that is not a multiple of a LayerNorm stream also makes averaged
  extra units, whose gradients flow into the copies: the state is then an
  approximation (measured: within 9% on a ViT's patch embedding, 16 -> 24).
- *What has no source.* Entries the rules fill with zeros, means or
  constants (zero-padded or averaged stream units, identity LayerNorms,
  cancelling or zero output projections of new blocks) and every weight of
  a new block have no gradient history: their first moments start at 0.
  Their second moments start at a typical value instead (a new block's
  weights: their template's `c^2 v`; other entries: the mean of their
  variable's carried `v'`), so that their first updates start near zero and
  grow with their own gradients, instead of the ~3x-6x too large steps a
  zero `v` gives under Adam's step-count bias correction.
- The step count (`iterations`) is copied, so the learning-rate schedule
  and Adam's bias correction continue (start a new schedule there with
  `LemonSchedule(..., start_step=)`); weight-decay exclusions carry over, and
  so does a `LossScaleOptimizer`'s loss scale.

Other methods of growing models restart the optimizer (MSG, bert2BERT,
LEMON's own code); staged training (Shen et al. 2022) carries it with the
rule above for its 2x width operator.

References:
    Shen et al., "Staged training for transformer language models",
    ICML 2022 (`allenai/staged-training`).
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024.
"""

import keras
import numpy as np

from keras_lemon import deferred
from keras_lemon.engine import ExpansionSession
from keras_lemon.expand import _job_path
from keras_lemon.expand import _prepare_graph
from keras_lemon.expand import expansion_request
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.support import explaining
from keras_lemon.support import graph_adapter

# How each optimizer slot scales with the gradient, per supported class:
# "first" (an average of g: c), "second" (of g^2: c^2), "abs" (of |g|: |c|),
# "update" (of normalized steps: sign(c)). Attribute names as in Keras 3.
SLOTS = {
    "SGD": {"momentums": "first"},
    "Adam": {"_momentums": "first", "_velocities": "second", "_velocity_hats": "second"},
    "AdamW": {"_momentums": "first", "_velocities": "second", "_velocity_hats": "second"},
    "Nadam": {"_momentums": "first", "_velocities": "second"},
    "Adamax": {"_m": "first", "_u": "abs"},
    "Lion": {"_momentums": "first"},
    "Lamb": {"_momentums": "first", "_velocities": "second"},
    "Adagrad": {"_accumulators": "second"},
    "RMSprop": {"_velocities": "second", "_momentums": "update",
                "_average_gradients": "first"},
}
_SCALARS = ("_iterations", "_u_product")  # copied as they are
_DIGIT = 4096  # probe digits stay exact in float32 after any scale
_DIGITS = 3  # 4096^3 ~ 6.9e10 source entries


def expand_optimizer(optimizer, source_model, expanded_model, **request):
    """A new optimizer for `expanded_model` that resumes `optimizer`'s state.

    The optimizer (of the same class and config, learning-rate schedule
    included) is built for `expanded_model.trainable_variables`; its step
    count is the source's and its slots (momenta, second moments) are the
    source's expanded with the index maps of the expansion. See the module
    docstring for the rule and its derivation: each copy of a unit starts
    with the gradient history its source unit had, scaled as its gradient
    scales (`c = 1 / (share x copies)`); weights without a source (new
    blocks, padded units) start with a zero first moment and a typical
    second moment.

    Args:
        optimizer: a built Keras optimizer that trained `source_model`
            (after `fit`, `model.optimizer`). Supported: SGD, Adam, AdamW,
            Nadam, Adamax, Lion, Lamb, Adagrad, RMSprop, and a
            `LossScaleOptimizer` around one of them (what `compile` makes
            under the `"mixed_float16"` policy: its loss scale carries on);
            not with `use_ema` or gradient accumulation.
        source_model: the model `optimizer` was built for.
        expanded_model: what `expand_model(source_model, ...)` returned.
        **request: the sizes and placement `expand_model` was given
            (`hidden`, `layers`, `heads`, `intermediate`, `placement`,
            `positions`, `exact`, `config_keys`, `sample_inputs`). Not needed
            for a model `expand_model` returned in this process (it records
            them); for one reloaded from disk, sizes default to the expanded
            model's and the placement to `"interleave"`.

    Returns:
        A new, built optimizer; pass it to `expanded_model.compile`.

    Raises:
        ValueError: for an optimizer class or option without a rule, an
            optimizer not built for `source_model`'s trainable variables, or
            an `expanded_model` that the request does not produce from
            `source_model`.

    Example:

    >>> import keras, keras_hub, numpy as np
    >>> small = keras_hub.models.BertBackbone(vocabulary_size=50,
    ...     num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
    >>> optimizer = keras.optimizers.Adam(1e-3)
    >>> optimizer.build(small.trainable_variables)
    >>> import keras_lemon
    >>> big = keras_lemon.expand_model(small, hidden=16, layers=2, seed=0)
    >>> resumed = expand_optimizer(optimizer, small, big)
    >>> type(resumed).__name__, len(resumed.variables) == 2 + 2 * len(
    ...     big.trainable_variables)
    ('Adam', True)

    References:
        Shen et al., "Staged training for transformer language models",
        ICML 2022.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return _expand_loss_scale_optimizer(optimizer, source_model, expanded_model, request)
    slots = _check_optimizer(optimizer, source_model)
    request = {**(expansion_request(expanded_model) or _inferred(expanded_model)), **request}
    maps = _probe_maps(source_model, expanded_model, request)
    new = optimizer.__class__.from_config(optimizer.get_config())
    _carry_weight_decay_exclusions(optimizer, new, maps)
    new.build(expanded_model.trainable_variables)
    for name in _SCALARS:
        if hasattr(optimizer, name):
            # A copy: on JAX, assigning the variable would share its buffer,
            # which the new optimizer's train step then donates (deletes).
            getattr(new, name).assign(keras.ops.convert_to_numpy(getattr(optimizer, name)))
    source_index = {id(v): i for i, v in enumerate(optimizer._trainable_variables)}
    for attribute, kind in slots.items():
        source_slots = getattr(optimizer, attribute, None)
        target_slots = getattr(new, attribute, None)
        if not source_slots:
            continue  # an option that is off: SGD without momentum, Adam without AMSGrad
        flat = maps.gather_source(lambda v: _slot_value(source_slots, source_index, v))
        for i, variable in enumerate(new._trainable_variables):
            if target_slots[i] is not None:
                target_slots[i].assign(maps.expand_slot(variable, flat, kind))
    return new


def _expand_loss_scale_optimizer(optimizer, source_model, expanded_model, request):
    """The inner optimizer expanded, wrapped again; the loss scale carries on."""
    inner = expand_optimizer(optimizer.inner_optimizer, source_model, expanded_model,
                             **request)
    new = keras.optimizers.LossScaleOptimizer(
        inner, initial_scale=optimizer.initial_scale,
        dynamic_growth_steps=optimizer.dynamic_growth_steps)
    new.build(expanded_model.trainable_variables)  # the inner one is built already
    for name in ("step_counter", "dynamic_scale"):
        getattr(new, name).assign(keras.ops.convert_to_numpy(getattr(optimizer, name)))
    return new


def _slot_value(slots, index, variable):
    slot = slots[index[id(variable)]] if id(variable) in index else None
    if slot is None:
        return np.zeros(variable.shape, np.float32)
    return np.asarray(keras.ops.convert_to_numpy(slot), np.float64)


def _check_optimizer(optimizer, model):
    name = type(optimizer).__name__
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"expand_optimizer: expected a keras.optimizers.Optimizer, got {name}.")
    slots = next((SLOTS[c.__name__] for c in type(optimizer).__mro__
                  if c.__name__ in SLOTS and c.__module__.startswith("keras")), None)
    if slots is None or type(optimizer).__name__ not in SLOTS:
        raise ValueError(
            f"expand_optimizer: no rule for optimizer class {name}: how its state scales "
            f"with the gradient is known for {', '.join(SLOTS)} only. Recompile the "
            "expanded model with a fresh optimizer instead.")
    if optimizer.use_ema or optimizer.gradient_accumulation_steps:
        option = "use_ema" if optimizer.use_ema else "gradient_accumulation_steps"
        raise ValueError(
            f"expand_optimizer: {name} with {option} is not supported (its extra "
            "variables have no expansion rule); use an optimizer without it.")
    model_vars = model.trainable_variables
    built_for = {id(v) for v in getattr(optimizer, "_trainable_variables", [])}
    missing = [v.path for v in model_vars if id(v) not in built_for]
    if not optimizer.built or missing:
        raise ValueError(
            f"expand_optimizer: the {name} optimizer is not built for the trainable "
            f"variables of model '{model.name}'"
            + (f" (missing: {missing[:3]})" if optimizer.built else "")
            + ": pass the optimizer that trained this model (`model.optimizer` after "
            "`fit`), or build it with `optimizer.build(model.trainable_variables)`.")
    return slots


def _inferred(expanded_model):
    sizes = graph_adapter(expanded_model).transformer_sizes()
    return dict(hidden=sizes.hidden, layers=sizes.layers, heads=sizes.heads,
                intermediate=sizes.intermediate)


def _carry_weight_decay_exclusions(source, target, maps):
    pattern = getattr(source, "_exclude_from_weight_decay_pattern", None)
    excluded = getattr(source, "_exclude_from_weight_decay", set())
    if pattern is None and not excluded:
        return
    target._exclude_from_weight_decay_pattern = pattern
    target._exclude_from_weight_decay = {
        target._var_key(t) for t, s in maps.sources if source._var_key(s) in excluded}
    target._exclude_from_weight_decay_cache = {}


class _ProbeSession(ExpansionSession):
    """Runs the rules on probe arrays instead of weights, records the results.

    Equal shares (`net2net`): every target entry is then linear in the
    source weights.
    """

    def __init__(self, offsets):
        super().__init__("net2net", seed=0)
        self.offsets = offsets  # id(source variable) -> (first global index, variable)
        self.sizes = {k: int(np.prod(v.shape)) for k, (_, v) in offsets.items()}
        self.probe = None  # callable(global indices) -> probe values
        self.outputs = {}  # id(target variable) -> array
        self.read_from = {}  # id(target variable) -> source variable

    def read(self, variable):
        if id(variable) not in self.offsets:
            self.offsets[id(variable)] = (sum(self.sizes.values()), variable)
        start, _ = self.offsets[id(variable)]
        size = int(np.prod(variable.shape))
        self.sizes[id(variable)] = size
        return self.probe(np.arange(start, start + size)).reshape(variable.shape)

    def record(self, ctx, name, source_variable, value, how):
        if ctx.target is not None:
            variable = getattr(ctx.target, name)
            self.outputs[id(variable)] = value
            self.read_from[id(variable)] = source_variable


class _Maps:
    """Per target variable: the scale, source entry and validity of each entry."""

    def __init__(self, pairs, scale, index, valid, new_block, offsets, total):
        self.pairs = pairs  # [(rebuilt target variable, expanded_model variable)]
        self.scale, self.index, self.valid = scale, index, valid
        self.new_block = new_block
        self.offsets = offsets
        self.total = total
        by_user = {id(user): rebuilt for rebuilt, user in pairs}
        self._rebuilt = by_user
        self.sources = []  # (expanded_model variable, the source variable it reads)
        self._read_from = {}
        carried = np.zeros(total, np.int64)
        for rebuilt, _ in pairs:
            key = id(rebuilt)
            if key in valid and not new_block[key]:
                carried += np.bincount(index[key][valid[key]], minlength=total)
        self.copies = carried  # N_i

    def gather_source(self, value_of):
        """All source variables' values (per `value_of(variable)`) in one flat array."""
        flat = np.zeros(self.total, np.float64)
        for start, variable in self.offsets.values():
            value = value_of(variable).reshape(-1)
            flat[start:start + value.size] = value
        return flat

    def expand_slot(self, variable, flat, kind):
        """The slot of `variable` (an expanded-model variable) from the source slots."""
        key = id(self._rebuilt[id(variable)])
        if key not in self.valid:  # not written from any source (cannot happen)
            return np.zeros(variable.shape, np.float32)
        valid, index, scale = self.valid[key], self.index[key], self.scale[key]
        copies = np.maximum(self.copies[index], 1)
        c = np.where(valid, 1.0 / np.where(valid, scale * copies, 1.0), 0.0)
        factor = {"first": c, "second": c * c, "abs": np.abs(c), "update": np.sign(c)}[kind]
        value = np.where(valid, factor * flat[index], 0.0)
        if kind in ("first", "update"):
            value = np.zeros_like(value) if self.new_block[key] else value
        elif not self.new_block[key]:
            # Entries without a source: a typical second moment of their variable.
            value = np.where(valid, value, value[valid].mean() if valid.any() else 0.0)
        return value.reshape(variable.shape).astype(np.float32)


def _probe_maps(source_model, expanded_model, request):
    adapter, _, target, dims, depth = _prepare_graph(
        source_model, request.get("hidden"), request.get("layers"), request.get("heads"),
        request.get("intermediate"), request.get("placement", "interleave"), "net2net",
        request.get("config_keys"), request.get("sample_inputs"),
        request.get("exact", True), request.get("positions"))
    offsets, start = {}, 0
    for variable in source_model.weights:
        if id(variable) not in offsets:
            offsets[id(variable)] = (start, variable)
            start += int(np.prod(variable.shape))
    session = _ProbeSession(offsets)
    with explaining(source_model):
        try:
            jobs = adapter.jobs(dims, depth)
            rebuilt, targets = adapter.build_target(dims, target, depth)
            if adapter.fit_to_targets(targets):
                jobs = adapter.jobs(dims, depth)
            pairs = _pair_weights(rebuilt, expanded_model, source_model)
            located = [(job, adapter.target_layer(targets, job)) for job in jobs]

            def run(probe):
                session.probe = probe
                session.outputs = {}
                for job, layer in located:
                    session.expand_layer(job.source, layer, _job_path(layer), job.dims,
                                         job.flags, rule=job.rule)
                return session.outputs

            scale = run(lambda g: np.ones(g.shape, np.float32))
            index = {k: np.zeros(v.shape, np.int64) for k, v in scale.items()}
            integral = {k: v != 0 for k, v in scale.items()}
            for digit in range(_DIGITS):
                base = _DIGIT ** digit
                out = run(lambda g: ((g // base) % _DIGIT + 1).astype(np.float32))
                for k, value in out.items():
                    s = np.where(scale[k] != 0, scale[k], 1.0)
                    code = value.astype(np.float64) / s - 1.0
                    rounded = np.rint(code)
                    integral[k] &= np.abs(code - rounded) < 0.01
                    integral[k] &= (rounded >= 0) & (rounded < _DIGIT)
                    index[k] += np.clip(rounded, 0, _DIGIT - 1).astype(np.int64) * base
            check = run(_check_values)
            total = sum(session.sizes.values())
            valid, new_block = {}, {}
            for k, value in check.items():
                idx = np.clip(index[k], 0, total - 1)
                expected = scale[k].astype(np.float64) * _check_values(idx)
                valid[k] = integral[k] & (index[k] < total) & (
                    np.abs(value - expected) <= 1e-5 * np.abs(expected))
                index[k] = idx.reshape(-1)
                valid[k] = valid[k].reshape(-1)
                scale[k] = scale[k].reshape(-1).astype(np.float64)
            for job, layer in located:
                fresh = job.block is not None and depth[job.block].is_new \
                    and job.source is job.key_layer
                for variable in layer.weights:
                    new_block[id(variable)] = new_block.get(id(variable), False) or fresh
        finally:
            deferred.discard()
    for k in valid:
        new_block.setdefault(k, False)
    maps = _Maps(pairs, scale, index, valid, new_block, session.offsets, total)
    maps.sources = [(user, session.read_from[id(rebuilt)]) for rebuilt, user in pairs
                    if id(rebuilt) in session.read_from]
    return maps


def _check_values(g):
    """Probe values in [1.25, 1.75): irregular, so that a sum or mean of other
    entries, or a constant (an identity LayerNorm's 1), does not match by chance."""
    return (np.asarray(g, np.float64) * 0.6180339887498949 % 1.0 * 0.5 + 1.25
            ).astype(np.float32)


def _pair_weights(rebuilt, expanded_model, source_model):
    ours, theirs = rebuilt.weights, expanded_model.weights
    shapes = [tuple(v.shape) for v in ours], [tuple(v.shape) for v in theirs]
    if shapes[0] != shapes[1]:
        if len(ours) != len(theirs):
            difference = f"it has {len(theirs)} weights, the request makes {len(ours)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(*shapes)) if a != b)
            difference = (f"its weight '{theirs[i].path}' has shape {shapes[1][i]}, the "
                          f"request makes {shapes[0][i]}")
        raise ExpansionError(
            f"expand_optimizer: model '{expanded_model.name}' is not what the expansion "
            f"request makes of {type(source_model).__name__} '{source_model.name}' "
            f"({difference}). Pass the sizes and placement it was expanded with (hidden=, "
            "layers=, heads=, intermediate=, placement=, positions=).")
    return list(zip(ours, theirs))

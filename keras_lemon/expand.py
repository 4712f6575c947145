"""`expand_model` and `expansion_plan`: the public entry points."""

import warnings
import weakref

import numpy as np

from keras_lemon import deferred
from keras_lemon.depth import PLACEMENTS
from keras_lemon.engine import ExpansionSession
from keras_lemon.plan import ExpansionPlan
from keras_lemon.sizes import resolve_sizes
from keras_lemon.support import explaining
from keras_lemon.support import graph_adapter

METHODS = ("lemon", "net2net", "zero_blocks")

# What `expand_model` was asked, per model it returned: `expand_optimizer`
# repeats the expansion's index maps without the caller restating them.
_REQUESTS = weakref.WeakKeyDictionary()


def expansion_request(model):
    """The keyword arguments `expand_model` made `model` with, or None."""
    return _REQUESTS.get(model)


def _check_options(method, placement):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")


def check_noise_scale(noise_scale, method):
    """`noise_scale` as a float, or a ValueError saying what is accepted."""
    try:
        value = float(noise_scale)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"noise_scale must be a finite number >= 0 (1.0: LEMON's default, 0: equal "
            f"shares and zero new blocks), got {noise_scale!r}.")
    if method == "net2net" and value != 1.0:
        raise ValueError(
            f"noise_scale={noise_scale!r} has no effect with method='net2net', which splits "
            "weights equally and draws no noise; use method='lemon' or 'zero_blocks'.")
    return value


def _prepare_graph(model, hidden, layers, heads, intermediate, placement, method,
                   config_keys, sample_inputs, exact=True, positions=None):
    """Traces a functional or subclassed model and resolves the target sizes."""
    _check_options(method, placement)
    adapter = graph_adapter(model, config_keys, sample_inputs)
    adapter.exact = exact
    if positions is not None:
        # New blocks after the listed source blocks: the depth follows.
        blocks = len(adapter.roles.blocks)
        layers = blocks + len(list(positions)) if layers is None else layers
    adapter.check_request(layers, intermediate)
    source = adapter.transformer_sizes()
    target = resolve_sizes(
        source, hidden=hidden, layers=layers, heads=heads,
        intermediate=intermediate, post_ln=adapter.roles.post_ln,
        model_name=adapter.name, tied_heads=adapter.source_sizes["tied_heads"], exact=exact,
    )
    dims = adapter.dims(target)
    depth = adapter.depth_plan(target.layers, placement, positions) \
        if adapter.roles.blocks else []
    return adapter, source, target, dims, depth


def _job_path(target_layer):
    """The target layer's path: plan rows name the target's variables, and the
    random draws are seeded by it (same seed, same weights, on every backend)."""
    return getattr(target_layer, "path", None) or target_layer.name


def expansion_plan(model, *, hidden=None, layers=None, heads=None,
                   intermediate=None, placement="interleave", method="lemon",
                   config_keys=None, sample_inputs=None, exact=True, positions=None):
    """What `expand_model` would do, without building the target model.

    Runs every layer rule on the source weights and records, for each target
    variable, its source and target shapes and the rule used. Invalid
    requests raise the same errors as `expand_model`.

    Args: as `expand_model` (no seed: the plan does not depend on it).

    Returns:
        An `ExpansionPlan`; `print(plan)` shows a table.

    Example:

    >>> import keras_hub
    >>> bert = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2,
    ...     num_heads=2, hidden_dim=32, intermediate_dim=64)
    >>> plan = expansion_plan(bert, hidden=64, layers=4)
    >>> plan.target_sizes["heads"]
    4
    """
    session = ExpansionSession(method, seed=0, planning=True)
    adapter, source, target, dims, depth = _prepare_graph(
        model, hidden, layers, heads, intermediate, placement, method,
        config_keys, sample_inputs, exact, positions,
    )
    with explaining(model):
        # The rebuilt model may size some layers itself (keras-hub's pooler
        # and MLM head are Dense(hidden_dim)): build it once, uninitialized,
        # to plan with the sizes expand_model will find.
        try:
            _, targets = adapter.build_target(dims, target, depth)
            adapter.fit_to_targets(targets)
        finally:
            deferred.discard()
        for job in adapter.jobs(dims, depth):
            path = _job_path(adapter.target_layer(targets, job))
            session.expand_layer(job.source, None, path, job.dims, job.flags, rule=job.rule)
    dims = {k: v for k, v in dims.items() if k != "ffn"}
    return ExpansionPlan(
        model_class=type(model).__name__,
        source_sizes=source.as_dict(),
        target_sizes=target.as_dict(),
        dims=dims,
        blocks=[s.describe() for s in depth],
        rows=session.rows,
        method=method,
    )


def expand_model(model, *, hidden=None, layers=None, heads=None,
                 intermediate=None, placement="interleave", method="lemon",
                 seed=None, noise_scale=1.0, config_keys=None, sample_inputs=None,
                 verify=True, progress=None, exact=True, positions=None):
    """Grows a transformer in width and depth without changing its outputs.

    Builds a new model of the same class from the source's config at the
    larger sizes and sets every weight so that, in inference mode, the new
    model computes the same outputs as the source (up to float round-off;
    post-LN depth growth up to `O(epsilon / var)`, see `keras_lemon.depth`).
    Hidden units, heads and FFN units are copied circularly; the weights that
    read copied units are split over the copies with random, unequal shares
    (LEMON's symmetry breaking); new blocks add exactly zero.

    The source model is never modified.

    Args:
        model: a keras-hub backbone the census supports (`BertBackbone`,
            `RobertaBackbone`, `DebertaV3Backbone`, `ViTBackbone`,
            `DINOV2Backbone`, the CLIP/SigLIP encoders, ...) or one of its
            tasks (`*MaskedLM`, `*TextClassifier`, `*ImageClassifier`), or a
            built `keras.Model` of your own, functional (nested models and
            custom layers inside allowed) or subclassed (rebuilt with
            `from_config`). All go one way: traced, their roles inferred
            from the graph, rebuilt from their config, written by the layer
            rules (see `keras_lemon.support` and
            `keras_lemon.adapters.keras_models`). Other keras-hub classes are
            refused with their reason.
        hidden: int. Target hidden size (default: unchanged). Post-LN models
            (BERT) need a multiple of the source's; pre-LN (ViT) any larger.
        layers: int. Target number of blocks (default: unchanged).
        heads: int. Target number of heads. Default: grows with `hidden` so
            that the head size stays; given explicitly, the head size may grow
            (exactly: the query is rescaled).
        intermediate: int. Target FFN width (default: keeps
            `intermediate / hidden`).
        placement: `"interleave"` (each block followed by its copies, LEMON's
            default) or `"stack"` (copies of the stack appended).
        positions: list of source block indices: one new block (a copy of
            block i) right after each listed block i, as LLaMA-Pro places
            its blocks; overrides `placement`. `layers` may be left None
            (it is the source's plus `len(positions)`).
        method: `"lemon"` (random fan-in split, new blocks whose weights
            cancel), `"net2net"` (equal split, zero new blocks: the
            Net2Net / bert2BERT-FPI baseline) or `"zero_blocks"` (LEMON's
            width expansion, new blocks whose output projections are zero:
            LLaMA-Pro's depth growth, a baseline for LEMON's cancelling
            blocks).
        seed: int. Seeds LEMON's random draws; the same seed gives the same
            weights on every backend. Default: a fresh random seed.
        noise_scale: float >= 0, the size of LEMON's symmetry-breaking draws
            relative to the default: the random fan-in shares and the
            weights of cancelling new blocks are uniform with the standard
            deviation of the source weight they replace, times
            `noise_scale`. The output is exact whatever the scale; it sets
            how far the copies of a unit start apart when training resumes.
            LEMON's reference code uses 0.1 of the initializer's scale for
            post-LN BERT. 0 gives equal shares and zero new blocks.
            Default 1.0: in the ViT replication (`benchmarks/RESULTS.md`,
            2x64 -> 4x128 on Fashion-MNIST, half the from-scratch budget,
            one seed) 0.1 ended at 0.8613 test accuracy, 1.0 at 0.8617 and
            0.8624 (two seeds), 4.0 at 0.8494: larger draws cost accuracy,
            smaller ones did not help.
        config_keys: for your own models: dict role -> config key naming the
            sizes in `get_config()` of a subclassed model or custom layer
            when their names are unusual; roles `"hidden"`, `"layers"`,
            `"heads"`, `"intermediate"`, `"head_dim"`. Common names
            (`hidden_dim`, `d_model`, `num_layers`, `mlp_dim`...) are known.
        sample_inputs: a batch of inputs, the probe of the lossless check
            (default: random token ids or images); for your own subclassed
            models also used to trace a model whose input shape is not in
            its build config.
        verify: compare the expanded model with the source on a probe batch
            and raise if they differ (by more than 1e-4 relative, or for
            your own post-LN models growing in depth 10x the LayerNorm
            epsilon). A backbone's hidden states are compared with the
            source's expanded to the new width. Default True.
        progress: optional callable `progress(done, total, path)`, called
            after each target variable is written (e.g. to draw a progress
            bar for a large model).
        exact: True (default) refuses what cannot be exact. False allows a
            post-LN width that is not a multiple (BERT-base 768 -> 1024, the
            bert2BERT setting): the stream is copied circularly and its
            LayerNorms tiled, so the partial copies shift each LayerNorm's
            mean and variance; a tied output embedding is divided by the
            mean number of copies. The result is the best approximation
            these rules give, *not* lossless: with `verify` its error on the
            probe batch is measured and reported as an
            `InexactExpansionWarning` (its `.error` attribute), never raised.
            Requests that are exact anyway are checked as usual.

    Returns:
        A new `keras.Model` of the same class as `model`.

    Raises:
        ValueError: for shrinking, heads that do not fit the width, a post-LN
            width that is not a multiple, an unsupported model, or a layer or
            operation of your model that cannot be expanded exactly; the
            message names the model or layer and the possible choices.

    Example:

    >>> import keras_hub
    >>> small = keras_hub.models.BertBackbone(vocabulary_size=100,
    ...     num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64)
    >>> big = expand_model(small, hidden=64, layers=4, seed=0)
    >>> big.num_layers, big.hidden_dim, big.num_heads
    (4, 64, 4)

    References:
        Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
        arXiv:2310.07999.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    noise_scale = check_noise_scale(noise_scale, method)
    session = ExpansionSession(method, seed, progress=progress, noise_scale=noise_scale)
    adapter, source, target, dims, depth = _prepare_graph(
        model, hidden, layers, heads, intermediate, placement, method,
        config_keys, sample_inputs, exact, positions,
    )
    try:
        with explaining(model):
            jobs = adapter.jobs(dims, depth)
            new_model, targets = adapter.build_target(dims, target, depth)
            if adapter.fit_to_targets(targets):
                jobs = adapter.jobs(dims, depth)
            session.expect(len(new_model.weights))
            for job in jobs:
                target_layer = adapter.target_layer(targets, job)
                session.expand_layer(job.source, target_layer, _job_path(target_layer),
                                     job.dims, job.flags, rule=job.rule)
    finally:
        deferred.finish()
    session.check_complete(new_model)
    _REQUESTS[new_model] = dict(
        hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
        placement=placement, positions=positions, exact=exact, config_keys=config_keys,
        sample_inputs=sample_inputs)
    if verify:
        if is_inexact(dims):
            _report_inexact(model, adapter.verify(new_model, tolerance=np.inf))
        else:
            adapter.verify(new_model)
    return new_model


class InexactExpansionWarning(UserWarning):
    """`expand_model(exact=False)` built an approximation; `.error` is its measured error."""

    def __init__(self, message, error):
        super().__init__(message)
        self.error = error


def is_inexact(dims):
    """True when the stream was expanded inexactly (`exact=False`, partial copies)."""
    stream = dims["stream"]
    return not stream.exact and stream.pattern == "circular" and bool(stream.extras)


def _report_inexact(model, error):
    warnings.warn(InexactExpansionWarning(
        f"{type(model).__name__} '{model.name}' was expanded with exact=False: NOT "
        f"lossless; on the probe batch max |diff| / max |output| = {error:.3g} "
        "(post-LN LayerNorms see partial copies of the stream).", error), stacklevel=3)

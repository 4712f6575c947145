"""Rules for keras-hub's Gemma, Gemma 2 and Gemma 3 (text) layers
(`keras_hub.src.models.gemma`, `...gemma3`; not exported by `keras_hub.layers`).

Gemma is pre-norm with RMSNorms that multiply by `1 + scale`, so its stream
grows zero-padded like Llama's (`expand_rms_norm(offset=1)`: `1 + scale' =
eta (1 + scale)`). Gemma 2 (a `GemmaBackbone` config) also normalizes each
branch's output before the residual sum (`use_post_attention_norm`,
`use_post_ffw_norm`): those norms read zero-padded branch outputs and are
expanded the same way. What the model computes from its config outside its
layers is declared as `ModelTraits`:

- the token embedding is multiplied by `sqrt(hidden_dim)`, which the rebuilt
  model recomputes: the table is rescaled by `sqrt(d / D)`, and the final
  norm, which feeds the tied output projection, by `sqrt(D / d)`;
- Gemma 2 alternates sliding-window and global attention by layer index
  (`i % 2`), Gemma 3 repeats five local layers (RoPE wavelength 1e4) and one
  global (1e6) (`i % 6`): new blocks come in whole periods.

The attention keeps its head size (RoPE) and grows query and KV heads
together (`keras_lemon.rules.keras_hub.llama.check_groups`); its q/k/v
kernels are `(heads, hidden, head_dim)`. With `query_head_dim_normalize=False`
queries are scaled by `1 / sqrt(hidden_dim // num_query_heads)`, which a new
width or head count changes: the query projection (Gemma 3 with q/k norms:
the query norm's scale) absorbs the ratio. Gemma 3's query and key RMSNorms
over the head size are copied. Logit soft-caps act on logits that are
unchanged.

In keras-hub 0.32 the decoder blocks of both backbones build their RMSNorms
with the default epsilon (1e-6), not the config's `layer_norm_epsilon`
(which sets only the final norm): it cannot change. For a width that is not
a multiple, the zero-padded stream is scaled by `1 / eta` instead
(`ModelTraits.fixed_norm_epsilon`, `KerasModelAdapter.stream_scale`): every
layer that writes it (the embedding, the output projections, Gemma 2's
branch-output norms) scales its output, and the norms keep their epsilon.

Gemma 3 with a vision encoder combines two widths and is refused.
"""

import math

from keras_hub.src.models.gemma.gemma_attention import CachedGemmaAttention
from keras_hub.src.models.gemma.gemma_backbone import GemmaBackbone
from keras_hub.src.models.gemma.rms_normalization import RMSNormalization as GemmaRMSNorm
from keras_hub.src.models.gemma3.gemma3_attention import CachedGemma3Attention
from keras_hub.src.models.gemma3.gemma3_backbone import Gemma3Backbone
from keras_hub.src.models.gemma3.gemma3_layers import RMSNormalization as Gemma3RMSNorm

from keras_lemon.rules.core_layers import expand_rms_norm
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.core_layers import register_rms_norm
from keras_lemon.rules.keras_hub.llama import expand_grouped_query_attention
from keras_lemon.rules.registry import register_model_traits
from keras_lemon.rules.registry import register_rule


def _gemma_rms_norm(layer, ctx):
    """`x / sqrt(mean(x^2) + eps) * (1 + scale)` (see `expand_rms_norm`)."""
    expand_rms_norm(layer, ctx, offset=1.0)


for _norm in (GemmaRMSNorm, Gemma3RMSNorm):
    register_rule(_norm, _gemma_rms_norm, kind="normalization")
    register_rms_norm(_norm)


def _heads(layer):
    """(query heads, KV heads, head size): kernels are `(heads, hidden, head_dim)`."""
    query, key = layer.query_dense.kernel.shape, layer.key_dense.kernel.shape
    return query[0], key[0], query[2]


for _attention in (CachedGemmaAttention, CachedGemma3Attention):
    register_attention_shape(
        _attention, lambda layer: (_heads(layer)[0], _heads(layer)[2], _heads(layer)[2]),
        input_arguments=("x",))


def query_normalization_ratio(layer, ctx):
    """Source over target query scale when it is `1/sqrt(hidden // heads)`, else 1.

    The target's queries must be multiplied by this so that `q' / sqrt(D // H')`
    equals `q / sqrt(d // h)`.
    """
    if layer.query_head_dim_normalize:
        return 1.0
    source = layer.hidden_dim // layer.num_query_heads
    target = ctx.dims["input"].target // ctx.dims["heads"].target
    return math.sqrt(target / source)


def _expand_heads(layer, ctx, query_scale):
    """Grouped-query attention with heads-first q/k/v kernels (see the module)."""
    expand_grouped_query_attention(
        layer, ctx, *_heads(layer), query="query_dense", key="key_dense",
        value="value_dense", output="output_dense", hidden_axis=1, query_scale=query_scale)


@register_rule(CachedGemmaAttention, kind="attention")
def expand_gemma_attention(layer, ctx):
    """Rotary grouped-query attention (see `expand_grouped_query_attention`)."""
    _expand_heads(layer, ctx, query_normalization_ratio(layer, ctx))


@register_rule(CachedGemma3Attention, kind="attention")
def expand_gemma3_attention(layer, ctx):
    """As Gemma's, plus the query/key RMSNorms over the head size (see the module)."""
    query_ratio = query_normalization_ratio(layer, ctx)
    norms = layer.use_query_key_norm
    _expand_heads(layer, ctx, 1.0 if norms else query_ratio)
    if norms:
        # The query norm undoes any scale of its input: the ratio goes into
        # its own scale instead.
        key_dim = ctx.dims["key_dim"]
        ctx.expand_sublayer("query_norm", input=key_dim, output=key_dim,
                            flags={"output_scale": query_ratio})
        ctx.expand_sublayer("key_norm", input=key_dim, output=key_dim, flags={})


def _embedding_scale(config):
    return math.sqrt(config["hidden_dim"])


def _gemma2_pattern(config):
    return ("sliding", "global") if config.get("use_sliding_window_attention") else ("global",)


def _gemma3_pattern(config):
    if not config.get("use_sliding_window_attention"):
        return ("global",)
    return ("local",) * 5 + ("global",)


# Gemma and Gemma 2 gate half of intermediate_dim (gate_dim_reduction=2).
register_model_traits(GemmaBackbone, embedding_scale=_embedding_scale,
                      size_multiples={"intermediate_dim": ("intermediate", 2)},
                      fixed_norm_epsilon=True, layer_pattern=_gemma2_pattern)
register_model_traits(Gemma3Backbone, embedding_scale=_embedding_scale,
                      fixed_norm_epsilon=True, layer_pattern=_gemma3_pattern)

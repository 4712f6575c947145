"""Rules for keras-hub's Llama layers (`keras_hub.src.models.llama`; not
exported by `keras_hub.layers`, so imported from their module).

Llama is pre-norm with RMSNorms (`LlamaLayerNorm`), so its stream grows
zero-padded (any width is exact: `eps' = eta^2 eps`, `scale' = eta scale`).
Its attention applies rotary embeddings over the head size, which stays, and
groups query heads over key/value heads (`ops.repeat(key, groups, axis=2)`:
query head i reads KV head i // groups). Query and KV heads are copied
circularly with the same number of groups, so that every copied query head
still reads a copy of its own KV head.
"""

from keras_hub.src.models.llama.llama_attention import LlamaAttention
from keras_hub.src.models.llama.llama_layernorm import LlamaLayerNorm

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import expand_rms_norm
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.core_layers import register_rms_norm
from keras_lemon.rules.keras_hub.blocks import require_fixed_head_size
from keras_lemon.rules.registry import register_rule


@register_rule(LlamaLayerNorm, kind="normalization")
def expand_llama_layer_norm(layer, ctx):
    """`x / sqrt(mean(x^2) + eps) * scale` (see `expand_rms_norm`)."""
    expand_rms_norm(layer, ctx)


register_rms_norm(LlamaLayerNorm)


def _head_dim(layer):
    return layer._query_dense.kernel.shape[-1]


register_attention_shape(
    LlamaAttention, lambda layer: (layer.num_query_heads, _head_dim(layer), _head_dim(layer)),
    input_arguments=("hidden_states",))


def check_groups(ctx, query_heads, kv_heads):
    """The KV heads' `DimExpansion` that keeps `query_heads / kv_heads` per group.

    Query heads grow circularly (`ctx.dims["heads"]`); KV heads grow to
    `heads / groups`, circularly too, so query head `j` (a copy of `j mod H`)
    reads KV head `j // groups` (a copy of `(j mod H) // groups`).
    """
    heads = ctx.dims["heads"]
    groups = query_heads // kv_heads
    if heads.target % groups:
        raise ctx.error(
            f"{query_heads} query heads share {kv_heads} key/value heads ({groups} per "
            f"group); {heads.target} query heads cannot keep the groups. Use a number of "
            f"heads that is a multiple of {groups}."
        )
    return DimExpansion(kv_heads, heads.target // groups, "circular")


def expand_grouped_query_attention(layer, ctx, query_heads, kv_heads, head_dim,
                                   query="_query_dense", key="_key_dense",
                                   value="_value_dense", output="_output_dense",
                                   hidden_axis=0, query_scale=1.0, key_scale=1.0):
    """Grouped-query attention with EinsumDense q/k/v kernels `(hidden, heads,
    head_dim)` (or `(heads, hidden, head_dim)` with `hidden_axis=1`, as in
    Gemma) and an output kernel `(heads, head_dim, hidden)`.

    Query and KV heads grow together (`check_groups`). `query_scale` and
    `key_scale` multiply the query and key projections.
    """
    heads, key_dim = ctx.dims["heads"], ctx.dims["key_dim"]
    require_fixed_head_size(ctx, head_dim)
    kv = check_groups(ctx, query_heads, kv_heads)
    inp = ctx.dims["input"]
    head_axis = 1 - hidden_axis
    ctx.expand_sublayer(query, flags={"fan_in": {hidden_axis: inp}, "fan_out": {head_axis: heads},
                                      "scale": query_scale})
    for name, scale in ((key, key_scale), (value, 1.0)):
        ctx.expand_sublayer(name, flags={"fan_in": {hidden_axis: inp},
                                         "fan_out": {head_axis: kv}, "scale": scale})
    ctx.expand_sublayer(
        output, flags={"fan_in": {0: heads, 1: key_dim}, "fan_out": {2: ctx.dims["output"]},
                       "zero_output": ctx.flags.zero_output, "scale": ctx.flags.output_scale})


@register_rule(LlamaAttention, kind="attention")
def expand_llama_attention(layer, ctx):
    """Rotary grouped-query attention (see `expand_grouped_query_attention`)."""
    expand_grouped_query_attention(layer, ctx, layer.num_query_heads,
                                   layer.num_key_value_heads, _head_dim(layer))

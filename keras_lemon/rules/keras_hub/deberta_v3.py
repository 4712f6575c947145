"""Rules for keras-hub's DeBERTaV3 layers (`keras_hub.src.models.deberta_v3`;
not exported by `keras_hub.layers`, so imported from their module).

DeBERTaV3 is post-LN. Its disentangled self-attention adds content-to-position
and position-to-content scores: the shared relative position table (a
LayerNorm of `RelativeEmbedding.rel_embeddings`) goes through the same query
and key projections as the stream, so it grows exactly like the stream
(whole circular copies, registered as a same-width argument), and the
projections of its copies sum to the source's. Heads are copied whole; the
head size stays (the score scale `1/sqrt(3 head_size)` depends on it).
"""

from keras_hub.src.models.deberta_v3.disentangled_self_attention import (
    DisentangledSelfAttention,
)
from keras_hub.src.models.deberta_v3.relative_embedding import RelativeEmbedding

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.registry import register_rule

register_attention_shape(
    DisentangledSelfAttention,
    lambda layer: (layer.num_heads, layer.attn_head_size, layer.attn_head_size),
    same_width_arguments=("rel_embeddings",),
)


@register_rule(DisentangledSelfAttention, kind="attention")
def expand_disentangled_self_attention(layer, ctx):
    """query/key/value `(hidden, heads, head)`; output `(heads * head, hidden)`."""
    inp, heads, key = ctx.dims["input"], ctx.dims["heads"], ctx.dims["key_dim"]
    if not key.is_identity:
        raise ctx.error(
            f"its attention scores are scaled by 1/sqrt(3 * head size) and mix "
            f"content and relative-position terms, so the head size {layer.attn_head_size} "
            f"must stay ({key.describe()} asked); let the heads grow with the width "
            "(leave heads=None)."
        )
    for name in ("_query_dense", "_key_dense", "_value_dense"):
        ctx.expand_sublayer(name, flags={"fan_in": {0: inp}, "fan_out": {1: heads, 2: key}})
    flat = DimExpansion(heads.source * key.source, heads.target * key.source, "circular")
    ctx.expand_sublayer(
        "_output_dense",
        flags={"fan_in": {0: flat}, "fan_out": {1: ctx.dims["output"]},
               "zero_output": ctx.flags.zero_output},
    )


@register_rule(RelativeEmbedding, kind="positional")
def expand_relative_embedding(layer, ctx):
    """The relative position table `(2 buckets, hidden)` and its LayerNorm.

    Its output depends only on the batch size (`"positional"`); it grows as
    the attention layers' input does (whole copies: the LayerNorm is exact).
    """
    out = ctx.dims["output"]
    ctx.fan_out("rel_embeddings", {1: out})
    ctx.expand_sublayer("layer_norm", input=out)

"""Rules for keras-hub's GPT-NeoX attention (`keras_hub.src.models.gpt_neo_x`).

Pre-LN LayerNorms, and one fused projection `(hidden, heads, 3 * head_size)`
for queries, keys and values, with rotary embeddings on a fraction of each
head (`rotary_percentage`): heads are copied whole, the head size (and so the
rotated part) stays.
"""

from keras_hub.src.models.gpt_neo_x.gpt_neo_x_attention import GPTNeoXAttention

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.keras_hub.blocks import require_fixed_head_size
from keras_lemon.rules.registry import register_rule

register_attention_shape(
    GPTNeoXAttention, lambda layer: (layer.num_heads, layer.attn_head_size, layer.attn_head_size),
    input_arguments=("hidden_states",))


@register_rule(GPTNeoXAttention, kind="attention")
def expand_gpt_neo_x_attention(layer, ctx):
    """Fused q/k/v kernel: heads fan-out; output kernel `(heads * head_size, hidden)`."""
    heads = ctx.dims["heads"]
    require_fixed_head_size(ctx, layer.attn_head_size)
    ctx.expand_sublayer("_qkv_dense", flags={"fan_in": {0: ctx.dims["input"]},
                                             "fan_out": {1: heads}})
    flat = DimExpansion(heads.source * layer.attn_head_size,
                        heads.target * layer.attn_head_size, "circular")
    ctx.expand_sublayer(
        "_output_dense", flags={"fan_in": {0: flat}, "fan_out": {1: ctx.dims["output"]},
                                "zero_output": ctx.flags.zero_output})

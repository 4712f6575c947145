"""Rules for keras-hub's SmolLM3 attention (`keras_hub.src.models.smollm3`).

Pre-norm with Keras `RMSNormalization` (so the stream grows zero-padded),
grouped-query attention whose q/k/v are `Dense(heads * head_dim)` (heads
outermost, copied whole: a circular copy of the flattened axis) and whose
output is an EinsumDense `(heads, head_dim, hidden)`. Some layers use no
rotary embedding (`rope_layer_enabled_list`, per layer in the config): a new
block takes its template's entry (`KerasModelAdapter` re-indexes per-layer
config lists).
"""

from keras_hub.src.models.smollm3.smollm3_layers import SmolLM3Attention
from keras_hub.src.models.smollm3.smollm3_layers import SmolLM3RotaryEmbedding

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.keras_hub.blocks import require_fixed_head_size
from keras_lemon.rules.keras_hub.llama import check_groups
from keras_lemon.rules.registry import register_rule

register_attention_shape(
    SmolLM3Attention, lambda layer: (layer.num_attention_heads, layer.head_dim, layer.head_dim),
    input_arguments=("hidden_states",))


@register_rule(SmolLM3Attention, kind="attention")
def expand_smollm3_attention(layer, ctx):
    """Dense q/k/v over whole heads; output kernel fan-in over the heads' copies."""
    heads, head_dim = ctx.dims["heads"], layer.head_dim
    require_fixed_head_size(ctx, head_dim)
    kv = check_groups(ctx, layer.num_attention_heads, layer.num_key_value_heads)
    inp = ctx.dims["input"]
    for name, count in (("q_proj", heads), ("k_proj", kv), ("v_proj", kv)):
        flat = DimExpansion(count.source * head_dim, count.target * head_dim, "circular")
        ctx.expand_sublayer(name, input=inp, output=flat)
    ctx.expand_sublayer(
        "o_proj", flags={"fan_in": {0: heads, 1: ctx.dims["key_dim"]},
                         "fan_out": {2: ctx.dims["output"]},
                         "zero_output": ctx.flags.zero_output})
    if getattr(layer, "rotary_embedding", None) is not None:
        ctx.expand_sublayer("rotary_embedding")


@register_rule(SmolLM3RotaryEmbedding)
def expand_smollm3_rotary_embedding(layer, ctx):
    """Its inverse frequencies depend on the head size alone: copied."""
    ctx.fan_out("inv_freq", {})

"""Rules for keras-hub's RoformerV2 layers (`keras_hub.src.models.roformer_v2`;
not exported by `keras_hub.layers`, so imported from their module).

RoformerV2 is post-norm with RMSNorms (`RoformerNorm`, no centering) and a
self-attention layer that applies rotary position embeddings to each head.
Rotary frequencies depend on the head size, so it stays; heads are copied
whole (circularly), which keeps every head's scores and output.
"""

from keras_hub.src.models.roformer_v2.roformer_v2_attention import RoformerAttention
from keras_hub.src.models.roformer_v2.roformer_v2_attention import RoformerNorm

from keras_lemon.rules.core_layers import expand_rms_norm
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.core_layers import register_rms_norm
from keras_lemon.rules.keras_hub.blocks import expand_rotary_heads
from keras_lemon.rules.registry import register_rule


@register_rule(RoformerNorm, kind="normalization")
def expand_roformer_norm(layer, ctx):
    """`x / sqrt(mean(x^2) + eps) * scale` (see `expand_rms_norm`)."""
    expand_rms_norm(layer, ctx)


register_rms_norm(RoformerNorm)
register_attention_shape(RoformerAttention,
                         lambda layer: (layer.heads, layer.head_size, layer.head_size))


@register_rule(RoformerAttention, kind="attention")
def expand_roformer_attention(layer, ctx):
    """q/k/v `Dense(heads * head_size)` with rotary embeddings, `o_dense` back."""
    expand_rotary_heads(layer, ctx, layer.heads, layer.head_size,
                        ("q_dense", "k_dense", "v_dense"), "o_dense")

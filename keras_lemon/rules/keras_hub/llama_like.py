"""Rules for keras-hub decoders laid out like Llama: Mistral, Qwen (Qwen2),
Qwen3 and Phi-3 (`keras_hub.src.models.*`; not exported by `keras_hub.layers`).

Each is pre-norm with an RMSNorm and rotary grouped-query attention whose
EinsumDense kernels are `(hidden, heads, head_dim)`, as in
`keras_lemon.rules.keras_hub.llama`: the same rule, with each class's
attribute names. Qwen's q/k/v biases are `(heads, head_dim)` and are copied
with their heads. Qwen3 also normalizes queries and keys over the head size
(RMSNorms that do not see the stream): they are copied as they are. In
keras-hub 0.32 they take the attention layer's own epsilon, not the config's
`layer_norm_epsilon`, so scaling that for a width that is not a multiple
leaves them alone; should they ever share it, their rule's epsilon check
refuses such a width instead of approximating.
"""

from keras_hub.src.models.mistral.mistral_attention import CachedMistralAttention
from keras_hub.src.models.mistral.mistral_layer_norm import MistralLayerNormalization
from keras_hub.src.models.phi3.phi3_attention import Phi3Attention
from keras_hub.src.models.phi3.phi3_layernorm import Phi3LayerNorm
from keras_hub.src.models.qwen.qwen_attention import QwenAttention
from keras_hub.src.models.qwen.qwen_layernorm import QwenLayerNorm
from keras_hub.src.models.qwen3.qwen3_attention import Qwen3Attention
from keras_hub.src.models.qwen3.qwen3_layernorm import Qwen3LayerNorm

from keras_lemon.rules.core_layers import expand_rms_norm
from keras_lemon.rules.core_layers import register_attention_shape
from keras_lemon.rules.core_layers import register_rms_norm
from keras_lemon.rules.keras_hub.llama import expand_grouped_query_attention
from keras_lemon.rules.registry import register_rule


def _rms_norm_rule(layer, ctx):
    """`x / sqrt(mean(x^2) + eps) * scale` (see `expand_rms_norm`)."""
    expand_rms_norm(layer, ctx)


for _norm in (MistralLayerNormalization, QwenLayerNorm, Qwen3LayerNorm, Phi3LayerNorm):
    register_rule(_norm, _rms_norm_rule, kind="normalization")
    register_rms_norm(_norm)


#: Attribute names of the projections: most keep them private, Phi-3 public.
_PRIVATE = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
_PUBLIC = ("query_dense", "key_dense", "value_dense", "output_dense")


def _projections(layer):
    return _PUBLIC if isinstance(layer, Phi3Attention) else _PRIVATE


def _heads(layer):
    """(query heads, KV heads, head size) of a Llama-like attention layer."""
    query_name, key_name = _projections(layer)[:2]
    query = getattr(layer, query_name).kernel.shape
    key = getattr(layer, key_name).kernel.shape
    return query[1], key[1], query[2]


for _attention in (CachedMistralAttention, QwenAttention, Qwen3Attention, Phi3Attention):
    register_attention_shape(
        _attention, lambda layer: (_heads(layer)[0], _heads(layer)[2], _heads(layer)[2]),
        input_arguments=("hidden_states",))


@register_rule(CachedMistralAttention, kind="attention")
@register_rule(QwenAttention, kind="attention")
@register_rule(Phi3Attention, kind="attention")
def expand_llama_like_attention(layer, ctx):
    """Rotary grouped-query attention (see `expand_grouped_query_attention`)."""
    expand_grouped_query_attention(layer, ctx, *_heads(layer), *_projections(layer))


@register_rule(Qwen3Attention, kind="attention")
def expand_qwen3_attention(layer, ctx):
    """As Llama's, plus the query and key RMSNorms over the head size."""
    expand_grouped_query_attention(layer, ctx, *_heads(layer))
    for name in ("_query_dense_layer_norm", "_key_dense_layer_norm"):
        ctx.expand_sublayer(name, input=ctx.dims["key_dim"], flags={})

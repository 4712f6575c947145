"""Rules for keras-hub's shared modeling layers (`keras_hub.layers`).

`TransformerEncoder` (pre-LN or post-LN), `PositionEmbedding`,
`ReversibleEmbedding` (Keras core, used by keras-hub for tied heads) and
`MaskedLMHead`. Roles: `"stream"` (the residual stream), `"intermediate"`
(the FFN width), `"heads"`, `"key_dim"`, `"value_dim"`.

Inside a traced graph (the general path) `TransformerEncoder` and
`MaskedLMHead`, whose rules have no graph kind, are opened up instead; the
rules here serve the BERT family adapter.
"""

import keras
from keras_hub.layers import MaskedLMHead
from keras_hub.layers import PositionEmbedding
from keras_hub.layers import TransformerEncoder

from keras_lemon.rules.core_layers import normalized_dim
from keras_lemon.rules.keras_hub.blocks import block_spec
from keras_lemon.rules.keras_hub.blocks import expand_pre_ln_block
from keras_lemon.rules.keras_hub.blocks import expand_two_dense_ffn
from keras_lemon.rules.keras_hub.blocks import new_block_flags
from keras_lemon.rules.registry import register_rule


@register_rule(TransformerEncoder)
def expand_transformer_encoder(layer, ctx):
    """keras-hub TransformerEncoder, pre-LN (`normalize_first`) or post-LN."""
    if layer.normalize_first:
        expand_pre_ln_block(
            ctx, "_self_attention_layer_norm", "_self_attention_layer",
            "_feedforward_layer_norm",
            lambda normed, stream, flags: expand_two_dense_ffn(
                ctx, "_feedforward_intermediate_dense",
                "_feedforward_output_dense", normed, stream, flags,
            ),
        )
        return
    stream, block = ctx.dims["stream"], block_spec(ctx)
    new = new_block_flags(ctx)
    ctx.expand_sublayer("_self_attention_layer", input=stream, output=stream, flags=new)
    ctx.expand_sublayer(
        "_self_attention_layer_norm", input=stream,
        flags={"identity": bool(block and block.input_norm_identity)},
    )
    expand_two_dense_ffn(
        ctx, "_feedforward_intermediate_dense", "_feedforward_output_dense",
        stream, stream, new,
    )
    if block is None or block.output_norm_from is not None:
        # A block that ends its chain carries the anchor's output LayerNorm.
        anchor = ctx.flags.output_norm_layer or layer
        ctx.expand_sublayer("_feedforward_layer_norm", source=anchor._feedforward_layer_norm, input=stream)
    else:
        ctx.expand_sublayer("_feedforward_layer_norm", input=stream, flags={"identity": True})


@register_rule(PositionEmbedding, kind="positional")
def expand_position_embedding(layer, ctx):
    """keras-hub PositionEmbedding: table `(length, features)`, features fan-out."""
    ctx.fan_out("position_embeddings", {1: ctx.dims["output"]})


@register_rule(keras.layers.ReversibleEmbedding, kind="projection")
def expand_reversible_embedding(layer, ctx):
    """Token table fan-out; an untied reverse projection reads `"reverse_input"`."""
    ctx.fan_out("embeddings", {1: ctx.dims["output"]})
    if not layer.tie_weights:
        ctx.fan_in("reverse_embeddings", {0: ctx.dims["reverse_input"]})


@register_rule(MaskedLMHead)
def expand_masked_lm_head(layer, ctx):
    """Masked-LM head: dense + LayerNorm, then logits against the token table.

    With a tied table the logits `h' . E'` sum `k` copies of each product,
    so the LayerNorm's gamma and beta are divided by `k` (as LEMON does for
    BERT). An untied output kernel is fan-in over the LayerNorm's output.
    """
    stream = ctx.dims["stream"]
    normed = normalized_dim(stream)
    ctx.expand_sublayer("_intermediate_dense", input=stream, output=stream)
    tied = layer.token_embedding is not None
    scale = 1.0 / stream.copies if tied and normed.pattern == "circular" else 1.0
    if tied and normed.extras and not normed.exact:
        scale = stream.source / stream.target  # the mean number of copies (exact=False)
    elif tied and normed.extras:
        raise ctx.error(
            f"a tied output embedding needs a width that is a multiple of {stream.source}."
        )
    ctx.expand_sublayer(
        "_intermediate_layer_norm", input=stream, flags={"output_scale": scale}
    )
    if not tied:
        ctx.fan_in("_kernel", {0: normed})
    ctx.fan_out("_bias", {})

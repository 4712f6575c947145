"""Rules for keras-hub layers: transformer blocks, embeddings, heads.

Roles used here: `"stream"` (the residual stream), `"intermediate"` (the FFN
width), `"heads"`, `"key_dim"`, `"value_dim"`; block-level instructions come in
`ctx.flags["block"]` (a `keras_lemon.depth.BlockSpec`) and, for containers of
blocks, `ctx.flags["depth"]` (a list of them).
"""

import keras
from keras_hub.src.layers.modeling.masked_lm_head import MaskedLMHead
from keras_hub.src.layers.modeling.position_embedding import PositionEmbedding
from keras_hub.src.layers.modeling.transformer_encoder import TransformerEncoder
from keras_hub.src.models.vit.vit_layers import MLP
from keras_hub.src.models.vit.vit_layers import ViTEncoder
from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock
from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import normalized_dim
from keras_lemon.rules.registry import register_rule


def _block(ctx):
    return ctx.flags.get("block")


def _new_block_flags(ctx):
    block = _block(ctx)
    return {"zero_output": bool(block and block.is_new)}


def _expand_pre_ln_block(ctx, norm1, attention, norm2, expand_ffn):
    """x + Attn(LN1 x), then + FFN(LN2 x); a new block's outputs cancel.

    `expand_ffn(normed, stream, flags)` expands the feed-forward part.
    """
    stream = ctx.dims["stream"]
    normed = normalized_dim(stream)
    new = _new_block_flags(ctx)
    ctx.expand_sublayer(norm1, input=stream)
    ctx.expand_sublayer(attention, input=normed, output=stream, flags=new)
    ctx.expand_sublayer(norm2, input=stream)
    expand_ffn(normed, stream, new)


def _expand_two_dense_ffn(ctx, first, second, normed, stream, flags):
    """Dense to the FFN width, activation, Dense back into the stream."""
    intermediate = ctx.dims["intermediate"]
    ctx.expand_sublayer(first, input=normed, output=intermediate)
    ctx.expand_sublayer(second, input=intermediate, output=stream, flags=flags)


@register_rule(TransformerEncoder)
def expand_transformer_encoder(layer, ctx):
    """keras-hub TransformerEncoder, pre-LN (`normalize_first`) or post-LN."""
    if layer.normalize_first:
        _expand_pre_ln_block(
            ctx, "_self_attention_layer_norm", "_self_attention_layer",
            "_feedforward_layer_norm",
            lambda normed, stream, flags: _expand_two_dense_ffn(
                ctx, "_feedforward_intermediate_dense",
                "_feedforward_output_dense", normed, stream, flags,
            ),
        )
        return
    stream, block = ctx.dims["stream"], _block(ctx)
    new = _new_block_flags(ctx)
    ctx.expand_sublayer("_self_attention_layer", input=stream, output=stream, flags=new)
    ctx.expand_sublayer(
        "_self_attention_layer_norm", input=stream,
        flags={"identity": bool(block and block.input_norm_identity)},
    )
    _expand_two_dense_ffn(
        ctx, "_feedforward_intermediate_dense", "_feedforward_output_dense",
        stream, stream, new,
    )
    if block is None or block.output_norm_from is not None:
        # A block that ends its chain carries the anchor's output LayerNorm.
        anchor = ctx.flags.get("output_norm_layer", layer)
        ctx.expand_sublayer("_feedforward_layer_norm", source=anchor._feedforward_layer_norm, input=stream)
    else:
        ctx.expand_sublayer("_feedforward_layer_norm", input=stream, flags={"identity": True})


@register_rule(ViTEncoderBlock)
def expand_vit_encoder_block(layer, ctx):
    """keras-hub ViT block (pre-LN): ln_1, mha, ln_2, mlp."""
    _expand_pre_ln_block(
        ctx, "layer_norm_1", "mha", "layer_norm_2",
        lambda normed, stream, flags: ctx.expand_sublayer(
            "mlp", input=normed, output=stream, flags=flags
        ),
    )


@register_rule(MLP)
def expand_vit_mlp(layer, ctx):
    """ViT MLP: dense_1 (input -> intermediate, gelu), dense_2 (-> output)."""
    _expand_two_dense_ffn(
        ctx, "dense_1", "dense_2", ctx.dims["input"], ctx.dims["output"], ctx.flags
    )


@register_rule(ViTEncoder)
def expand_vit_encoder(layer, ctx):
    """keras-hub ViT encoder: its blocks per `ctx.flags["depth"]`, then the final LN."""
    depth = ctx.flags["depth"]
    for t, spec in enumerate(depth):
        source = layer.encoder_layers[spec.template]
        ctx.expand_sublayer(
            "encoder_layers", index=t, source=source,
            name=f"transformer_block_{t + 1}", flags={"block": spec},
        )
    ctx.expand_sublayer("layer_norm", input=ctx.dims["stream"])


@register_rule(ViTPatchingAndEmbedding)
def expand_vit_patching_and_embedding(layer, ctx):
    """Class token, patch conv and position table all write the stream."""
    stream = ctx.dims["stream"]
    if layer.use_class_token:
        ctx.fan_out("class_token", {2: stream})
    channels = layer.patch_embedding.kernel.shape[2]
    ctx.expand_sublayer("patch_embedding", input=DimExpansion(channels, channels), output=stream)
    ctx.expand_sublayer("position_embedding", output=stream)


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

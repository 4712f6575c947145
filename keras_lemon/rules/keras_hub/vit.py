"""Rules for keras-hub's ViT layers (`keras_hub.src.models.vit`; not exported
by `keras_hub.layers`, so imported from their module)."""

from keras_hub.src.models.vit.vit_layers import MLP
from keras_hub.src.models.vit.vit_layers import ViTEncoder
from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock
from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.keras_hub.blocks import expand_pre_ln_block
from keras_lemon.rules.keras_hub.blocks import expand_two_dense_ffn
from keras_lemon.rules.registry import register_rule


@register_rule(ViTEncoderBlock)
def expand_vit_encoder_block(layer, ctx):
    """keras-hub ViT block (pre-LN): ln_1, mha, ln_2, mlp."""
    expand_pre_ln_block(
        ctx, "layer_norm_1", "mha", "layer_norm_2",
        lambda normed, stream, flags: ctx.expand_sublayer(
            "mlp", input=normed, output=stream, flags=flags
        ),
    )


@register_rule(MLP)
def expand_vit_mlp(layer, ctx):
    """ViT MLP: dense_1 (input -> intermediate, gelu), dense_2 (-> output)."""
    expand_two_dense_ffn(
        ctx, "dense_1", "dense_2", ctx.dims["input"], ctx.dims["output"], ctx.flags
    )


@register_rule(ViTEncoder)
def expand_vit_encoder(layer, ctx):
    """keras-hub ViT encoder: its blocks per `ctx.flags.depth`, then the final LN."""
    depth = ctx.flags.depth
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

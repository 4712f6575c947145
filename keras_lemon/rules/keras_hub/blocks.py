"""Helpers shared by the rules for keras-hub's transformer blocks.

Block-level instructions come in `ctx.flags.block` (a
`keras_lemon.depth.BlockSpec`); a new block's output projections get
`zero_output` (they cancel, or are zero for the baselines).
"""

from keras_lemon.index_maps import DimExpansion
from keras_lemon.rules.core_layers import normalized_dim


def block_spec(ctx):
    return ctx.flags.block


def new_block_flags(ctx):
    block = block_spec(ctx)
    return {"zero_output": bool(block and block.is_new)}


def expand_pre_ln_block(ctx, norm1, attention, norm2, expand_ffn):
    """x + Attn(LN1 x), then + FFN(LN2 x); a new block's outputs cancel.

    `expand_ffn(normed, stream, flags)` expands the feed-forward part.
    """
    stream = ctx.dims["stream"]
    normed = normalized_dim(stream)
    new = new_block_flags(ctx)
    ctx.expand_sublayer(norm1, input=stream)
    ctx.expand_sublayer(attention, input=normed, output=stream, flags=new)
    ctx.expand_sublayer(norm2, input=stream)
    expand_ffn(normed, stream, new)


def expand_two_dense_ffn(ctx, first, second, normed, stream, flags):
    """Dense to the FFN width, activation, Dense back into the stream."""
    intermediate = ctx.dims["intermediate"]
    ctx.expand_sublayer(first, input=normed, output=intermediate)
    ctx.expand_sublayer(second, input=intermediate, output=stream, flags=flags)


def expand_rotary_heads(layer, ctx, num_heads, head_size, projections, output):
    """Self-attention whose q/k/v `Dense` layers write `heads * head_size` features.

    The flattened axis holds whole heads (heads outermost), so copying heads
    circularly is a circular copy of that axis. The head size must stay:
    rotary position embeddings (and the `1/sqrt(head_size)` scale) are
    computed over it.
    """
    heads, key = ctx.dims["heads"], ctx.dims["key_dim"]
    if not key.is_identity:
        raise ctx.error(
            f"its rotary position embeddings are computed over the head size "
            f"{head_size}, so the head size cannot grow ({key.describe()} asked); "
            "let the heads grow with the width instead (leave heads=None)."
        )
    flat = DimExpansion(num_heads * head_size, heads.target * head_size, "circular")
    for name in projections:
        ctx.expand_sublayer(name, input=ctx.dims["input"], output=flat)
    ctx.expand_sublayer(output, input=flat, output=ctx.dims["output"],
                        flags={"zero_output": ctx.flags.zero_output})

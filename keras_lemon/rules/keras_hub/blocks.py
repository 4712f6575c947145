"""Helpers shared by the rules for keras-hub's transformer blocks.

Block-level instructions come in `ctx.flags.block` (a
`keras_lemon.depth.BlockSpec`); a new block's output projections get
`zero_output` (they cancel, or are zero for the baselines).
"""

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

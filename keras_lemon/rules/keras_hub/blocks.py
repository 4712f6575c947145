"""Helpers shared by the rules for keras-hub's attention layers."""

from keras_lemon.index_maps import DimExpansion


def require_fixed_head_size(ctx, head_size):
    """Refuses a growing head size: rotary embeddings are computed over it."""
    key = ctx.dims["key_dim"]
    if not key.is_identity:
        raise ctx.error(
            f"its rotary position embeddings are computed over the head size "
            f"{head_size}, so the head size cannot grow ({key.describe()} asked); "
            "let the heads grow with the width instead (leave heads=None)."
        )


def expand_rotary_heads(layer, ctx, num_heads, head_size, projections, output):
    """Self-attention whose q/k/v `Dense` layers write `heads * head_size` features.

    The flattened axis holds whole heads (heads outermost), so copying heads
    circularly is a circular copy of that axis. The head size must stay:
    rotary position embeddings (and the `1/sqrt(head_size)` scale) are
    computed over it.
    """
    heads = ctx.dims["heads"]
    require_fixed_head_size(ctx, head_size)
    flat = DimExpansion(num_heads * head_size, heads.target * head_size, "circular")
    for name in projections:
        ctx.expand_sublayer(name, input=ctx.dims["input"], output=flat)
    ctx.expand_sublayer(output, input=flat, output=ctx.dims["output"],
                        flags={"zero_output": ctx.flags.zero_output})

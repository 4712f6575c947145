"""Rules for keras-hub's shared modeling layers (`keras_hub.layers`).

`PositionEmbedding` (a position table added to the stream: `"positional"`)
and `ReversibleEmbedding` (Keras core, used by keras-hub for tied heads).
Composite keras-hub layers (`TransformerEncoder`, `MaskedLMHead`, the ViT
blocks) need no rule: the graph path opens them up and expands what is
inside.
"""

import keras
from keras_hub.layers import PositionEmbedding

from keras_lemon.rules.registry import register_rule


@register_rule(PositionEmbedding, kind="positional")
def expand_position_embedding(layer, ctx):
    """keras-hub PositionEmbedding: table `(length, features)`, features fan-out."""
    ctx.fan_out("position_embeddings", {1: ctx.dims["output"]})


@register_rule(keras.layers.ReversibleEmbedding, kind="projection")
def expand_reversible_embedding(layer, ctx):
    """Token table fan-out; an untied reverse projection reads `"reverse_input"`.

    `output_scale` rescales the table (a model that multiplies the embedding
    by a factor of its width, as Gemma does by `sqrt(hidden_dim)`).
    """
    ctx.fan_out("embeddings", {1: ctx.dims["output"]}, scale=ctx.flags.output_scale)
    if not layer.tie_weights:
        ctx.fan_in("reverse_embeddings", {0: ctx.dims["reverse_input"]})
